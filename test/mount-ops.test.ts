// Start-up checks (each with its own exit status and a one-line message), the ways a mount
// ends, and recovery from a mount whose process was killed.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { DEFAULT_RETRY } from '../lib/o3/retry.js'
import { MOUNT_NODE_FLAGS } from '../fs-driver/node-flags.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { isMounted, mount, mountEnv, runCli, startMount, tempMountpoint } from './support/o3mount.js'
import { until } from './support/until.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const BUCKET = `mount-ops-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())
await client.put('hello.txt', 'hello\n')

/** The CLI failed with `code` and said so in one line that names the problem. */
function failedWith(t: Test, r: { code: number | null; stderr: string }, code: number, pattern: RegExp): void {
  t.equal(r.code, code, `exit status ${code}`)
  const lines = r.stderr.trim().split('\n')
  t.equal(lines.length, 1, `one line: ${r.stderr.trim()}`)
  t.match(lines[0], pattern)
}

t.test('start-up checks on the mountpoint and options', async (t) => {
  const base = mkdtempSync(path.join(tmpdir(), 'o3mount-checks-'))
  t.teardown(() => rmSync(base, { recursive: true, force: true }))
  failedWith(t, await runCli(info, [path.join(base, 'missing'), BUCKET]), ExitCode.mountpointMissing, /does not exist.*mkdir/)
  writeFileSync(path.join(base, 'file'), 'x')
  failedWith(t, await runCli(info, [path.join(base, 'file'), BUCKET]), ExitCode.mountpointNotDirectory, /not a directory/)
  mkdirSync(path.join(base, 'full'))
  writeFileSync(path.join(base, 'full', 'x'), 'x')
  failedWith(t, await runCli(info, [path.join(base, 'full'), BUCKET]), ExitCode.mountpointNotEmpty, /not empty/)
  mkdirSync(path.join(base, 'empty'))
  failedWith(t, await runCli(info, [path.join(base, 'empty'), BUCKET, '--block-size', '3M']), ExitCode.badOption, /--block-size/)
  failedWith(t, await runCli(info, [path.join(base, 'empty'), BUCKET, '--metadata-ttl', 'soon']), ExitCode.badOption, /--metadata-ttl/)
  const memory = /--cache-mem 67108864 MiB is more than (this machine's memory|its cgroup's memory limit) \(\d+ MiB\)/
  failedWith(t, await runCli(info, [path.join(base, 'empty'), BUCKET, '--cache-mem', '64T']), ExitCode.badOption, memory)
  failedWith(t, await runCli(info, [path.join(base, 'empty')]), ExitCode.badOption, /usage/)
  failedWith(t, await runCli(info, [path.join(base, 'empty'), BUCKET], { O3_MAX_ATTEMPTS: '0' }), ExitCode.config, /"0" \(from O3_MAX_ATTEMPTS\).*1 to 20/)
  failedWith(t, await runCli(info, [path.join(base, 'empty'), BUCKET, '--max-attempts', 'many']), ExitCode.config, /"many" \(from --max-attempts\)/)
  t.notOk(isMounted(path.join(base, 'empty')))
})

t.test('start-up checks on the server', async (t) => {
  const mp = tempMountpoint(t)
  failedWith(t, await runCli(info, [mp, 'no-such-bucket-o3m']), 66, /bucket no-such-bucket-o3m does not exist/)
  failedWith(t, await runCli(info, [mp, BUCKET], { O3_SECRET_ACCESS_KEY: 'wrong' }), 77, /rejected the credentials/)
  // Port 9 (discard): nothing listens there. The mount gives up by itself once its retries are
  // spent (exit 69, not killed by runCli's deadline, which leaves their longest schedule a minute to spare).
  const retries = Array.from(
    { length: DEFAULT_RETRY.maxAttempts - 1 },
    (_, i) => 2 * Math.min(DEFAULT_RETRY.maxDelayMs / 2, DEFAULT_RETRY.baseDelayMs * 2 ** i),
  )
  const longest = retries.reduce((a, b) => a + b, 0)
  const r = await runCli(info, [mp, BUCKET], { O3_ENDPOINT: 'http://127.0.0.1:9' }, longest + 60_000)
  failedWith(t, r, 69, /cannot reach http:\/\/127\.0\.0\.1:9/)
  t.notOk(isMounted(mp))
})

t.test('no /dev/fuse, no libfuse', async (t) => {
  const mp = tempMountpoint(t)
  const dummy = path.join(mp, '..', `o3mount-dummy-${process.pid}`)
  writeFileSync(dummy, '')
  t.teardown(() => rmSync(dummy, { force: true }))
  const cli = `${process.execPath} --import tsx fs-driver/cli.ts ${mp} ${BUCKET}`
  // A private mount namespace hides the real device or library from this one command only.
  const hide = (target: string) =>
    new Promise<{ code: number | null; stderr: string }>((resolve) =>
      execFile(
        'unshare',
        ['-m', '--propagation', 'private', 'sh', '-c', `mount --bind ${dummy} ${target} && exec ${cli}`],
        { cwd: ROOT, env: mountEnv(info) },
        (err, _out, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
      ),
    )
  failedWith(t, await hide('/dev/fuse'), ExitCode.noFuse, /\/dev\/fuse/)
  failedWith(t, await hide('/lib/x86_64-linux-gnu/libfuse3.so.3'), ExitCode.noFuse, /libfuse 3 cannot be loaded/)
})

t.test('already mounted; SIGTERM unmounts; credentials stay out of argv', async (t) => {
  const m = await mount(t, info, BUCKET)
  t.notMatch(readFileSync(`/proc/${m.pid}/cmdline`, 'utf8'), info.secretAccessKey === 'testing' ? /testing/ : new RegExp(info.secretAccessKey))
  failedWith(t, await runCli(info, [m.mountpoint, BUCKET]), ExitCode.alreadyMounted, /already mounted/)
  t.equal(await fs.readFile(path.join(m.mountpoint, 'hello.txt'), 'utf8'), 'hello\n', 'the first mount still works')
  m.child.kill('SIGTERM')
  const code = await new Promise<number | null>((r) => m.child.once('exit', (c) => r(c)))
  t.equal(code, 0, 'exits 0')
  t.notOk(isMounted(m.mountpoint), 'unmounted')
})

t.test('a SIGTERM while the mount starts leaves neither its control socket nor a mount behind', async (t) => {
  // Once the default action (killed by the signal, the socket file and at times a dead mount left):
  // 10 of 10 starts signalled the moment their control socket appeared.
  const sockets = mkdtempSync(path.join(tmpdir(), 'o3mount-sockets-'))
  t.teardown(() => rmSync(sockets, { recursive: true, force: true }))
  for (let round = 1; round <= 3; round++) {
    const mp = tempMountpoint(t)
    const socket = path.join(sockets, `control-${round}.sock`)
    const m = startMount(t, info, BUCKET, { mountpoint: mp, args: ['--control-socket', socket] })
    while (!existsSync(socket) && m.child.exitCode === null) await new Promise((r) => setImmediate(r))
    m.child.kill('SIGTERM')
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => m.child.once('exit', (c, s) => r([c, s])))
    t.equal(signal, null, `round ${round}: the process ended itself, not by the signal`)
    // Stopped before the mount was up (130), or mounted and unmounted at once (0).
    t.ok(code === 0 || code === ExitCode.interrupted, `round ${round}: exit ${code}: ${m.log().slice(-1500)}`)
    t.notOk(existsSync(socket), `round ${round}: the control socket's file is gone`)
    t.notOk(isMounted(mp), `round ${round}: nothing is mounted`)
    t.ok((await fs.stat(mp)).isDirectory(), `round ${round}: the mountpoint is a plain directory again (no dead mount)`)
  }
})

t.test('fusermount -u and o3mount --unmount both end the mount process', async (t) => {
  for (const how of ['fusermount', 'o3mount'] as const) {
    const m = await mount(t, info, BUCKET)
    if (how === 'fusermount') await new Promise((r) => execFile('fusermount', ['-u', m.mountpoint], r))
    else t.equal((await runCli(info, ['--unmount', m.mountpoint])).code, 0, '--unmount exits 0')
    await until(() => m.child.exitCode !== null, `${how}: the mount process to exit`)
    t.equal(m.child.exitCode, 0)
    t.notOk(isMounted(m.mountpoint))
    failedWith(t, await runCli(info, ['--unmount', m.mountpoint]), ExitCode.notMounted, /is not mounted/)
  }
})

t.test('kill -9 leaves a dead mount that the next mount clears', async (t) => {
  const mp = tempMountpoint(t)
  const first = await mount(t, info, BUCKET, { mountpoint: mp })
  first.child.kill('SIGKILL')
  await new Promise((r) => first.child.once('exit', r))
  await t.rejects(fs.stat(path.join(mp, 'hello.txt')), { code: 'ENOTCONN' }, 'the old mount is dead')
  const second = await mount(t, info, BUCKET, { mountpoint: mp })
  t.equal(await fs.readFile(path.join(mp, 'hello.txt'), 'utf8'), 'hello\n', 'a fresh mount on the same path works')
  t.match(second.log(), /clearing a stale mount/)
  await second.stop()
  await first.stop()
})

t.test('--daemon detaches and prints the PID and log path', async (t) => {
  const mp = tempMountpoint(t)
  const logDir = mkdtempSync(path.join(tmpdir(), 'o3mount-daemon-'))
  const log = path.join(logDir, 'mount.log')
  let pid = 0
  t.teardown(async () => {
    await new Promise((r) => execFile('fusermount', ['-u', '-z', mp], r))
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    rmSync(logDir, { recursive: true, force: true })
  })
  const r = await runCli(info, [mp, BUCKET, '--daemon', '--log-file', log])
  t.equal(r.code, 0, r.stderr)
  const m = /pid (\d+); log (\S+);/.exec(r.stdout)
  t.ok(m, r.stdout)
  pid = Number(m![1])
  t.equal(m![2], log)
  // Started by launchMount() with the mount's Node flags, as the o3mount command's shebang gives them.
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
  t.same(argv.slice(1, 1 + MOUNT_NODE_FLAGS.length), MOUNT_NODE_FLAGS)
  t.equal(readFileSync(path.join(ROOT, 'fs-driver', 'cli.ts'), 'utf8').split('\n')[0], `#!/usr/bin/env -S node ${MOUNT_NODE_FLAGS.join(' ')}`)
  t.ok(isMounted(mp))
  t.equal(await fs.readFile(path.join(mp, 'hello.txt'), 'utf8'), 'hello\n')
  t.match(readFileSync(log, 'utf8'), /"msg":"mounted"/)
  t.equal((await runCli(info, ['--unmount', mp])).code, 0)
  await until(() => {
    try {
      process.kill(pid, 0)
      return false
    } catch {
      return true
    }
  }, 'the daemon to exit after the unmount')
})
