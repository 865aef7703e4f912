// tap's `before` script: one S3 server for the whole run instead of one per test file.
// It runs in a child of the tap runner, so its environment cannot reach the test files; the
// info goes to .tap/s3-server/<runner pid>.json, which useS3Server finds by ancestry. The
// script's watchdog watches the runner, so a run killed before `after` still stops it.
// Nothing goes to stdout: it would land in the middle of the TAP stream.
import { mkdir, readdir, rename, unlink, writeFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { RUN_STATE_DIR, runStateFile, startS3Server } from './s3-server.js'

const runner = process.ppid
await mkdir(RUN_STATE_DIR, { recursive: true })

// Files left by runs that were killed: their servers are already gone (watchdog).
for (const name of await readdir(RUN_STATE_DIR)) {
  const pid = Number(path.basename(name, '.json'))
  if (!Number.isInteger(pid) || !existsSync(`/proc/${pid}`)) {
    await unlink(path.join(RUN_STATE_DIR, name)).catch(() => {})
  }
}

try {
  const t0 = Date.now()
  const { stop: _stop, ...info } = await startS3Server({ watchPid: runner, stopOnExit: false })
  const file = runStateFile(runner)
  await writeFile(`${file}.tmp`, JSON.stringify(info))
  await rename(`${file}.tmp`, file)
  console.error(`# S3 server for this run at ${info.endpoint} (${Date.now() - t0} ms to start)`)
} catch (err) {
  // Tests that need S3 will try to start their own and fail with the reason; the rest run.
  console.error(`# no shared S3 server for this run: ${(err as Error).message}`)
}
