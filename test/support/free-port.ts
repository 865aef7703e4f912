import { createServer } from 'node:net'

/** A TCP port on loopback that was free a moment ago (for a store or rendezvous a child process binds). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number }
      s.close(() => resolve(port))
    })
    s.on('error', reject)
  })
}
