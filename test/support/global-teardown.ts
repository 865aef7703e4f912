// tap's `after` script: stops the server that global-setup.ts started for this run. tap runs
// it whether tests passed or failed.
import { readFile, unlink } from 'node:fs/promises'
import { runStateFile, stopS3Server } from './s3-server.js'

const file = runStateFile(process.ppid)
let dir: string | undefined
try {
  dir = (JSON.parse(await readFile(file, 'utf8')) as { dir?: string }).dir
} catch {
  // global-setup started nothing
}
if (dir) {
  try {
    await stopS3Server(dir)
  } catch (err) {
    console.error(`# stopping the S3 server in ${dir} failed: ${(err as Error).message}`)
    process.exitCode = 1
  }
}
await unlink(file).catch(() => {})
