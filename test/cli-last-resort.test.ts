// The last resort of every command: an error nobody caught (an unhandled rejection, an exception
// thrown from a callback), injected into the real process from outside, ends it with one line and
// the internal-error status 70, and o3mount unmounts first instead of leaving a dead mountpoint.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { cliCommand } from '../lib/paths.js'
import { isMounted, mountEnv } from './support/o3mount.js'
import { createBucket, useS3Server } from './support/s3-server.js'

const SLIP = path.join(import.meta.dirname, 'fixtures', 'inject-slip.mjs')
const info = await useS3Server(t)
const BUCKET = `last-resort-${process.pid}`
await createBucket(info, BUCKET)

interface Started {
  child: ChildProcess
  output(): string
  exited: Promise<number | null>
}

/** A command with the slip preloaded; killed at teardown if it is still running. */
function start(t: Test, source: string, args: string[], env: NodeJS.ProcessEnv): Started {
  const cli = cliCommand(source)
  const child = spawn(process.execPath, ['--import', SLIP, ...cli.execArgv, cli.file, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout!.on('data', (d: Buffer) => (out += d))
  child.stderr!.on('data', (d: Buffer) => (out += d))
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return { child, output: () => out, exited }
}

/** Resolves once `ready()` holds, checked as output arrives or connections come in. */
function until(s: Started, ready: () => boolean, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`never ${what}:\n${s.output()}`)), 120_000)
    const check = () => {
      if (!ready()) return
      clearTimeout(timer)
      clearInterval(poll)
      resolve()
    }
    const poll = setInterval(check, 100)
    s.child.on('close', () => {
      clearTimeout(timer)
      clearInterval(poll)
      reject(new Error(`exited before it ${what}:\n${s.output()}`))
    })
    check()
  })
}

/** The one line a command writes for the slip, and nothing of Node's own report. */
function checkEnding(t: Test, name: string, code: number | null, output: string, kind: string): void {
  t.equal(code, ExitCode.internal, `exit 70: ${output.slice(-3000)}`)
  const lines = output.split('\n').filter((l) => l.startsWith(`${name}: `))
  t.equal(lines.length, 1, 'one line of its own')
  t.match(lines[0], new RegExp(`^${name}: internal error \\(${kind}\\): injected ${kind}`))
  t.notMatch(output, /at process\.<anonymous>|node:internal|Node\.js v\d+/, "not Node's own crash report")
}

for (const kind of ['unhandled rejection', 'uncaught exception']) {
  t.test(`o3mount, ${kind}: unmounts, one line, exit 70`, async (t) => {
    const mountpoint = mkdtempSync(path.join(tmpdir(), 'o3mount-mnt-'))
    // A mount the process left behind dead is cleared before its directory goes.
    t.teardown(() => {
      if (isMounted(mountpoint)) execFileSync('fusermount', ['-u', '-z', mountpoint])
      rmSync(mountpoint, { recursive: true, force: true })
    })
    const env = mountEnv(info, { O3_TEST_SLIP: kind === 'uncaught exception' ? 'exception' : 'rejection' })
    const m = start(t, 'fs-driver/cli.ts', [mountpoint, BUCKET], env)
    await until(m, () => m.output().includes('"msg":"mounted"'), 'mounted')
    m.child.kill('SIGUSR2')
    const code = await m.exited
    checkEnding(t, 'o3mount', code, m.output(), kind)
    t.notOk(isMounted(mountpoint), 'the mountpoint was unmounted')
    t.same(readdirSync(mountpoint), [], 'and is an empty directory again, not a dead mount')
  })
}

// A server that accepts connections and never answers: the commands below are still waiting on it
// when the slip comes.
async function silentServer(t: Test): Promise<{ endpoint: string; connections: () => number }> {
  let connections = 0
  const held: net.Socket[] = []
  const server = net.createServer((s) => {
    connections++
    held.push(s)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()))
  t.teardown(() => {
    for (const s of held) s.destroy()
    server.close()
  })
  return { endpoint: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, connections: () => connections }
}

const scratch = mkdtempSync(path.join(tmpdir(), 'o3-last-resort-'))
t.teardown(() => rmSync(scratch, { recursive: true, force: true }))
writeFileSync(path.join(scratch, 'file.bin'), 'x')

const WAITING: [string, string, string[]][] = [
  ['o3ckpt', 'checkpoint/cli.ts', ['ls', `o3://${BUCKET}/run`]],
  ['o3upload', 'upload/cli.ts', [scratch, `o3://${BUCKET}/up`]],
  ['o3train', 'trainer/cli.ts', ['--data', '/usr/share/datasets/fashion-mnist', '--model', 'mlp', '--ckpt', `o3://${BUCKET}/run`]],
]
for (const [name, source, args] of WAITING) {
  t.test(`${name}, unhandled rejection while waiting on the server: one line, exit 70`, async (t) => {
    const silent = await silentServer(t)
    const c = start(t, source, args, mountEnv(info, { O3_ENDPOINT: silent.endpoint, O3_LOG_LEVEL: 'warn' }))
    await until(c, () => silent.connections() > 0, 'connected to the server')
    c.child.kill('SIGUSR2')
    checkEnding(t, name, await c.exited, c.output(), 'unhandled rejection')
  })
}
