// What o3train keeps under the temp directory: the run directory of an `--data o3://` run (its
// mount and the mount's log) and the per-node share of local ranks under torchrun. Nothing
// outlives the run that wrote it: a kill -9 leaves it to the next start, which removes only its
// own kind of leftovers, of this user, whose writer is dead. Real S3 server, real FUSE mounts,
// real o3train processes.
import { spawn, spawnSync } from 'node:child_process'
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { CheckpointWriter } from '../checkpoint/index.js'
import type { DistributedOptions } from '../addon/index.js'
import { O3IntegrityError } from '../lib/o3/index.js'
import { cliCommand } from '../lib/paths.js'
import { processStart } from '../lib/processes.js'
import { silentLogger } from '../lib/log.js'
import { NodeShare } from '../trainer/node-share.js'
import { sweepDeadRuns } from '../trainer/temp-dirs.js'
import { capture, openClient, syntheticState } from './fixtures/ckpt.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { isMounted, mountEnv } from './support/o3mount.js'
import { alive, killGroup, startGroup } from './support/process-group.js'
import { createBucket, useS3Server } from './support/s3-server.js'
import { startFaultProxy } from './support/fault-proxy.js'
import { until } from './support/until.js'

const BUCKET = `trainer-temp-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)

const scratch = mkdtempSync(join(tmpdir(), 'o3train-temp-test-'))
t.teardown(() => rmSync(scratch, { recursive: true, force: true }))
/** A temp directory of its own for each case, so that only its own o3train processes write there. */
function privateTmp(t: Test): string {
  const dir = mkdtempSync(join(scratch, 'tmp-'))
  t.teardown(() => {
    for (const m of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
      const mp = m.split(' ')[4]
      if (mp?.startsWith(`${dir}/`)) spawnSync('fusermount', ['-u', '-z', mp])
    }
    rmSync(dir, { recursive: true, force: true })
  })
  return dir
}
const pidns = /\[(\d+)\]/.exec(readlinkSync('/proc/self/ns/pid'))![1]
const ours = (dir: string) => readdirSync(dir).filter((n) => /^o3train-(run|node)-/.test(n))
/** What o3train-like is in a temp directory (tsx keeps its cache there too). */
const o3trainLike = (dir: string) => readdirSync(dir).filter((n) => n.startsWith('o3train-'))

const cli = cliCommand('trainer/cli.ts')
const o3train = (args: string[], tmp: string) => startGroup(t, process.execPath, [...cli.execArgv, cli.file, ...args], mountEnv(info, { TMPDIR: tmp }))

const subset = join(scratch, 'fmnist')
const files = writeFashionSubset(subset, 512, 128)
const data = openClient(t, info, `${BUCKET}/fmnist`)
for (const f of files) await data.put(f, readFileSync(join(subset, f)))
const train = ['--dataset', 'fashion-mnist', '--model', 'mlp', '--batch', '32', '--threads', '1']

t.test('a run killed with its mount (kill -9) leaves its directory; the next start removes it, and only what is its own', async (t) => {
  const tmp = privateTmp(t)
  const run = o3train(['--data', `o3://${BUCKET}/fmnist`, ...train, '--epochs', '50'], tmp)
  await run.waitFor((out) => out.includes('"msg":"training"'), 'training')
  const [dir] = ours(tmp)
  t.match(dir, new RegExp(`^o3train-run-${pidns}\\.${run.child.pid}\\.\\d+-[A-Za-z0-9]{6}$`), 'one run directory, named for its process')
  t.equal(statSync(join(tmp, dir!)).mode & 0o777, 0o700, 'private')
  t.same(readdirSync(join(tmp, dir!)).sort(), ['control.sock', 'data', 'mount.log'], "holding the mountpoint, the mount's log and its control socket")
  const mountPid = Number(/"pid":(\d+),"msg":"mounted the data for this run"/.exec(run.output())![1])
  // Both killed: the mountpoint is left disconnected (ENOTCONN), the worst case for a clean-up.
  // Stopped first, so that neither sees the other go and cleans up between the two kills (the
  // mount unmounts itself once its parent's channel closes).
  for (const sig of ['SIGSTOP', 'SIGKILL'] as const) {
    process.kill(run.child.pid!, sig)
    process.kill(mountPid, sig)
  }
  await run.done
  await until(() => !alive(mountPid), 'the mount process to die')
  t.ok(isMounted(join(tmp, dir!, 'data')), 'a dead mount is left behind')

  // Look-alikes that are not a dead run of this user's: the sweep leaves every one of them alone.
  const start = processStart(process.pid)
  const keep = [
    `o3train-run-${pidns}.${process.pid}.${start}-alive1`, // its writer (this test) is running
    `o3train-run-${Number(pidns) + 1}.999999.1-otherns`, // another pid namespace's
    'o3train-test-notours', // not a kind o3train writes
    `o3train-node-${pidns}.999999.1-theirs`, // another user's
  ]
  for (const n of keep) mkdirSync(join(tmp, n))
  chownSync(join(tmp, keep[3]!), 65534, 65534)
  const target = mkdtempSync(join(scratch, 'target-'))
  writeFileSync(join(target, 'precious'), 'x')
  symlinkSync(target, join(tmp, `o3train-run-${pidns}.999999.1-symlnk`)) // a symlink, never followed
  keep.push(`o3train-run-${pidns}.999999.1-symlnk`)

  const next = o3train(['--data', subset, ...train, '--epochs', '1'], tmp)
  const { code, stderr } = await next.done
  t.equal(code, 0, stderr)
  t.match(stderr, /"msg":"removed what a dead o3train run left in the temp directory"/)
  t.notOk(isMounted(join(tmp, dir!, 'data')), 'the dead mount was unmounted')
  t.same(o3trainLike(tmp).sort(), keep.sort(), 'the dead run is gone; the look-alikes stay')
  t.equal(readFileSync(join(target, 'precious'), 'utf8'), 'x', 'nothing was removed through the symlink')
})

t.test('a clean run, a failed run and a stopped run leave nothing in the temp directory', async (t) => {
  const tmp = privateTmp(t)
  const clean = await o3train(['--data', `o3://${BUCKET}/fmnist`, ...train, '--epochs', '1'], tmp).done
  t.equal(clean.code, 0, clean.stderr)
  t.same(ours(tmp), [], 'after a clean run')

  // No test split: the run fails at its evaluation, after the mount is up; the mount's last lines are logged first.
  const trainOnly = openClient(t, info, `${BUCKET}/train-only`)
  for (const f of files.filter((f) => f.startsWith('train-'))) await trainOnly.put(f, readFileSync(join(subset, f)))
  const failed = await o3train(['--data', `o3://${BUCKET}/train-only`, ...train, '--epochs', '1'], tmp).done
  t.equal(failed.code, 91, failed.stderr)
  t.match(failed.stderr, /"mountLog":\[.*mounted.*\],"msg":"the data mount's last log lines"/)
  t.same(ours(tmp), [], 'after a failed run')

  // Stopped at once (a second signal) with a checkpoint upload held by the proxy, so that the
  // first signal cannot end the run before the second comes.
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const args = ['--data', `o3://${BUCKET}/fmnist`, ...train, '--epochs', '50', '--ckpt', `o3://${BUCKET}/runs/stopped`, '--ckpt-every', '2']
  const stopped = startGroup(t, process.execPath, [...cli.execArgv, cli.file, ...args], mountEnv(info, { TMPDIR: tmp, O3_ENDPOINT: proxy.endpoint }))
  await stopped.waitFor((out) => out.includes('"msg":"checkpoint upload started"'), 'a checkpoint upload')
  proxy.stall(600_000)
  process.kill(stopped.child.pid!, 'SIGTERM')
  await stopped.waitFor((out) => out.includes('"msg":"stopping at the next step boundary'), 'the first signal taken')
  process.kill(stopped.child.pid!, 'SIGTERM')
  await stopped.waitFor((out) => out.includes('"msg":"exiting now'), 'the second signal taken')
  proxy.clear()
  t.equal((await stopped.done).code, 130)
  t.same(ours(tmp), [], 'after a second signal', { output: stopped.output() })
})

const dist = (localRank: number): DistributedOptions => ({
  rank: localRank,
  worldSize: 2,
  localRank,
  masterAddr: '127.0.0.1',
  masterPort: 29500,
  restartCount: 0,
  useAgentStore: true,
  timeoutSeconds: 30,
})

t.test('the node share: private, unguessable, verified on load, removed at the end and after a kill -9', async (t) => {
  const tmp = privateTmp(t)
  // torchrun's attempt directory: <mkdtemp>/<run id>_<random>/attempt_0/<local rank>/error.json.
  const attempt = join(mkdtempSync(join(scratch, 'torchelastic_')), 'none_x1y2z3', 'attempt_0')
  const env = (localRank: number) => ({ LOCAL_WORLD_SIZE: '2', TORCHELASTIC_ERROR_FILE: join(attempt, String(localRank), 'error.json') })
  t.equal(NodeShare.open(dist(1), { LOCAL_WORLD_SIZE: '2' }, 30, silentLogger, tmp), undefined, 'no share without torchrun: each rank works alone')

  const run = openClient(t, info, `${BUCKET}/share-run`)
  const writer = await CheckpointWriter.open(run, { localDir: scratch, signer: null })
  const state = syntheticState([64 << 10, 4096])
  await writer.save(state, { step: 7, epoch: 0, model: 'synthetic', config: {}, dataPosition: {} })
  const loaded = await writer.store.load('latest')

  const leader = NodeShare.open(dist(0), env(0), 30, silentLogger, tmp)!
  const [dir] = ours(tmp)
  t.match(dir, new RegExp(`^o3train-node-${pidns}\\.${process.pid}\\.\\d+-[0-9a-f]{32}$`), 'named for local rank 0 and a digest of the attempt directory')
  t.notMatch(dir, /29500|127\.0\.0\.1|none/, 'nothing guessable from the job: not the store address, not the run id')
  t.equal(statSync(join(tmp, dir!)).mode & 0o777, 0o700, 'a private directory')
  leader.write('restore.safetensors', loaded.file)
  leader.publish('restore', { name: loaded.entry.name })
  for (const f of readdirSync(join(tmp, dir!))) t.equal(statSync(join(tmp, dir!, f)).mode & 0o777, 0o600, `${f} is 0600`)
  t.throws(() => leader.write('restore.safetensors', loaded.file), { code: 'EEXIST' }, 'a file is never overwritten')

  const follower = () => NodeShare.open(dist(1), env(1), 30, silentLogger, tmp)!
  const other = follower()
  const { name } = await other.take<{ name: string }>('restore', 'the checkpoint')
  const copy = await writer.store.loadCopy(name, other.read('restore.safetensors'))
  t.same(
    copy.tensors.map((x) => x.data),
    state.map((x) => x.data),
    'the other rank loads the verified copy',
  )

  // A copy that differs from the run's record by one byte is refused.
  const file = join(tmp, dir!, 'restore.safetensors')
  const bytes = readFileSync(file)
  bytes[bytes.length - 1]! ^= 1
  writeFileSync(file, bytes)
  await t.rejects(writer.store.loadCopy(name, follower().read('restore.safetensors')), O3IntegrityError, 'a tampered copy fails its sha256 and CID')
  // Nor is a symlink followed, nor a directory read that is not private or not this user's.
  unlinkSync(file)
  symlinkSync(join(scratch, 'fmnist', files[0]!), file)
  t.throws(() => follower().read('restore.safetensors'), { code: 'ELOOP' }, 'a symlink is not followed')
  chmodSync(join(tmp, dir!), 0o755)
  await t.rejects(follower().take('restore', 'the checkpoint'), /not a private directory/, 'mode 0755 is refused')
  chmodSync(join(tmp, dir!), 0o700)
  chownSync(join(tmp, dir!), 65534, 65534)
  await t.rejects(follower().take('restore', 'the checkpoint'), /not a private directory/, 'another owner is refused')
  chownSync(join(tmp, dir!), process.getuid!(), process.getgid!())
  leader.close()
  t.same(ours(tmp), [], 'local rank 0 removes it at its end')

  // Local rank 0 killed with its copy of the checkpoint in the share: the next start removes it.
  const code = `import { NodeShare } from ${JSON.stringify(new URL('../trainer/node-share.ts', import.meta.url).href)}
import { silentLogger } from ${JSON.stringify(new URL('../lib/log.ts', import.meta.url).href)}
const s = NodeShare.open(${JSON.stringify(dist(0))}, ${JSON.stringify(env(0))}, 30, silentLogger, ${JSON.stringify(tmp)})
s.write('restore.safetensors', 'a checkpoint copy'); console.log('written'); setInterval(() => {}, 1000)`
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'], detached: true })
  t.teardown(() => killGroup(child.pid!))
  let said = ''
  child.stdout.on('data', (d: Buffer) => (said += d))
  await until(() => said.includes('written'), 'the child to write its share')
  process.kill(child.pid!, 'SIGKILL')
  await until(() => !alive(child.pid!), 'the child to die')
  t.equal(ours(tmp).length, 1, 'left behind by the kill')
  const { logger } = capture()
  await sweepDeadRuns(logger, tmp)
  t.same(ours(tmp), [], 'removed by the next start')
})
