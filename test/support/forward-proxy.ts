// An HTTP forward proxy on loopback, as a company network puts in front of the internet: CONNECT
// tunnels (for https endpoints) and absolute-URI requests (for http ones), both to loopback only.
// It counts what went through it, so that tests can tell a client that used it from one that went
// around it. It never keeps the process alive.
import http from 'node:http'
import net, { type Socket } from 'node:net'
import { listenOnLoopback } from './loopback-server.js'

export interface ForwardProxy {
  /** http://127.0.0.1:PORT */
  url: string
  /** CONNECT tunnels opened, and absolute-URI requests forwarded. */
  readonly tunnels: number
  readonly requests: number
  /** Bytes sent from the servers to the clients, tunnels and requests together. */
  readonly bytesDown: number
  close(): Promise<void>
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1'])

export async function startForwardProxy(): Promise<ForwardProxy> {
  let tunnels = 0
  let requests = 0
  let bytesDown = 0
  const server = http.createServer((req, res) => {
    let target: URL
    try {
      target = new URL(req.url ?? '')
    } catch {
      res.writeHead(400).end('absolute URI required')
      return
    }
    if (target.protocol !== 'http:' || !LOOPBACK.has(target.hostname)) {
      res.writeHead(403).end('loopback http only')
      return
    }
    requests++
    const up = http.request(
      { host: target.hostname, port: target.port, method: req.method, path: target.pathname + target.search, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers)
        upRes.on('data', (c: Buffer) => (bytesDown += c.length))
        upRes.pipe(res)
      },
    )
    up.on('error', () => res.destroy())
    req.pipe(up)
  })
  server.on('connect', (req: http.IncomingMessage, client: Socket, head: Buffer) => {
    const [host, port] = (req.url ?? '').split(/:(?=\d+$)/)
    if (!host || !port || !LOOPBACK.has(host)) {
      client.end('HTTP/1.1 403 Forbidden\r\n\r\n')
      return
    }
    tunnels++
    const up = net.connect(Number(port), host, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      if (head.length) up.write(head)
      up.on('data', (c: Buffer) => (bytesDown += c.length))
      up.pipe(client)
      client.pipe(up)
    })
    const end = () => {
      up.destroy()
      client.destroy()
    }
    up.on('error', end)
    client.on('error', end)
    up.on('close', end)
    client.on('close', end)
  })
  const { port, close } = await listenOnLoopback(server)
  return {
    url: `http://127.0.0.1:${port}`,
    get tunnels() {
      return tunnels
    },
    get requests() {
      return requests
    },
    get bytesDown() {
      return bytesDown
    },
    close,
  }
}
