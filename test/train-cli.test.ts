// o3train end to end: real S3 server, real mounts, the real addon, real Fashion-MNIST (a subset
// of it where a test restarts training many times), and faults from the proxy.
import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { execFileSync, spawnSync } from 'node:child_process'
import { availableParallelism, tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { readFile } from 'node:fs/promises'
import type { O3Client } from '../lib/o3/index.js'
import { cliCommand } from '../lib/paths.js'
import { CheckpointStore } from '../checkpoint/index.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { startFaultProxy } from './support/fault-proxy.js'
import { mount, mountEnv, isMounted, statsWhen } from './support/o3mount.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { buildImageFolder } from './support/imagefolder.js'

const BUCKET = 'train-cli'
const info = await useS3Server(t)
await createBucket(info, BUCKET)

function client(location: string, endpoint = info.endpoint): O3Client {
  const c = serverClient(info, location, { endpoint })
  t.teardown(() => c.close())
  return c
}

async function uploadDir(dir: string, location: string): Promise<void> {
  const c = client(location)
  const walk = (d: string): string[] => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(d, e.name)) : [join(d, e.name)]))
  for (const f of walk(dir)) await c.put(relative(dir, f), await readFile(f))
}

const scratch = mkdtempSync(join(tmpdir(), 'o3train-test-'))
t.teardown(() => rmSync(scratch, { recursive: true, force: true }))
// 2,048 training and 512 test samples: 32 steps an epoch at batch 64.
const subset = join(scratch, 'fmnist')
writeFashionSubset(subset, 2048, 512)
await uploadDir(subset, `${BUCKET}/fmnist`)

interface Run {
  child: ChildProcess
  /** Resolves with the exit status once the process is gone. */
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>
  /** Resolves once stderr contains `text` (`times` times). */
  waitFor(text: string, timeoutMs?: number, times?: number): Promise<void>
  stderr(): string
}

const cli = cliCommand('trainer/cli.ts')
function o3train(args: string[], env: NodeJS.ProcessEnv = {}): Run {
  const child = spawn(process.execPath, [...cli.execArgv, cli.file, ...args], { cwd: scratch, env: mountEnv(info, env), stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (d: Buffer) => (stdout += d))
  child.stderr!.on('data', (d: Buffer) => (stderr += d))
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string }>((resolve) =>
    child.once('exit', (code, signal) => setImmediate(() => resolve({ code, signal, stdout, stderr }))),
  )
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return {
    child,
    done,
    stderr: () => stderr,
    waitFor: (text, timeoutMs = 120_000, times = 1) =>
      new Promise((resolve, reject) => {
        const seen = () => stderr.split(text).length - 1 >= times
        const timer = setTimeout(() => reject(new Error(`o3train never logged ${JSON.stringify(text)}:\n${stderr}`)), timeoutMs)
        const check = () => {
          if (seen()) {
            clearTimeout(timer)
            child.stderr!.off('data', check)
            resolve()
          }
        }
        child.stderr!.on('data', check)
        void done.then(() => {
          clearTimeout(timer)
          if (seen()) resolve()
          else reject(new Error(`o3train exited before logging ${JSON.stringify(text)}:\n${stderr}`))
        })
        check()
      }),
  }
}

interface Summary {
  steps: number
  step: number
  stopped: boolean
  epochsCompleted: number
  test?: { accuracy: number }
  resumedFrom?: { name: string; step: number; cid: string }
  checkpoints: { name: string; cid: string; step: number }[]
  threads: { threads: number; cores: number; env: Record<string, string> }
  malloc: { setBy: string; mmapThreshold?: number; trimThreshold?: number }
}
const summaryOf = (stdout: string): Summary => JSON.parse(stdout.trim().split('\n').at(-1)!) as Summary

function store(run: string): CheckpointStore {
  return new CheckpointStore(client(`${BUCKET}/${run}`))
}

const base = ['--dataset', 'fashion-mnist', '--model', 'cnn', '--batch', '64', '--lr', '0.05', '--seed', '7']

const SIGNING_KEY = 'ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80'

t.test('--data o3://: mounts for the run (without the signing key), trains, checkpoints, unmounts at exit', async (t) => {
  const keyFile = join(scratch, 'signing.key')
  writeFileSync(keyFile, SIGNING_KEY, { mode: 0o600 })
  const r = o3train(['--data', `o3://${BUCKET}/fmnist`, ...base, '--epochs', '2', '--ckpt', `o3://${BUCKET}/runs/basic`, '--ckpt-every', 'epoch'], {
    AKAVE_PRIVATE_KEY: SIGNING_KEY,
    AKAVE_PRIVATE_KEY_FILE: keyFile,
  })
  await r.waitFor('"msg":"mounted the data for this run"')
  // The mount's pid follows its mountpoint in that line (the line's first pid is o3train's own).
  const pid = Number(/"mountpoint":"[^"]+","pid":(\d+)/.exec(r.stderr())![1])
  t.not(pid, r.child.pid)
  const environ = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0')
  t.ok(
    environ.some((v) => v.startsWith('O3_ACCESS_KEY_ID=')),
    'the mount got what it needs: the O3 credentials',
  )
  t.same(
    environ.filter((v) => v.startsWith('AKAVE_PRIVATE_KEY')),
    [],
    'but not the signing key nor its file name',
  )
  t.match(readFileSync(`/proc/${pid}/cmdline`, 'utf8'), /^(?!.*(ac0974bec39a|testing)).*$/s, 'no secret in its argv')
  const { code, stdout, stderr } = await r.done
  t.equal(code, 0, stderr)
  const s = summaryOf(stdout)
  t.equal(s.epochsCompleted, 2)
  t.equal(s.steps, 64)
  t.ok(s.test && s.test.accuracy > 0.6, `test accuracy ${s.test?.accuracy} after 2 epochs on 2,048 samples`)
  t.same(
    s.checkpoints.map((c) => c.step),
    [32, 64],
  )
  t.same(
    s.threads,
    { threads: availableParallelism(), cores: availableParallelism(), env: { OMP_WAIT_POLICY: 'PASSIVE', OPENBLAS_NUM_THREADS: '1' } },
    'threads from the machine, passive OpenMP, one-thread BLAS',
  )
  t.match(stderr, /"threads":"\d+ intra-op on \d+ cores, OMP_WAIT_POLICY=PASSIVE OPENBLAS_NUM_THREADS=1"/, 'the set-up in the start line')
  t.same(s.malloc, { setBy: 'o3', mmapThreshold: 32 * 2 ** 20, trimThreshold: 2 ** 30 }, "malloc keeps a step's freed memory for the next")
  t.match(stderr, /"malloc":"mmap threshold 32 MiB, trim threshold 1024 MiB"/, 'and says so in the start line')
  const mountpoint = /"mountpoint":"([^"]+)"/.exec(stderr)?.[1]
  t.ok(mountpoint, 'it said where it mounted the data')
  t.notOk(isMounted(mountpoint!), 'unmounted at exit')
  const latest = await store('runs/basic').load('latest')
  t.equal(latest.entry.cid, s.checkpoints[1]!.cid, 'latest is the final checkpoint, verified')
  t.equal(latest.meta.step, 64)
  t.equal(latest.record.signer, '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266', 'o3train itself signed with the key')
})

t.test('malloc settings in the environment are left to glibc, and the run says whose they are', async (t) => {
  const r = o3train(['--data', subset, ...base, '--model', 'mlp', '--epochs', '1', '--no-evaluate', '--threads', '1'], { MALLOC_TRIM_THRESHOLD_: '131072' })
  const { code, stdout, stderr } = await r.done
  t.equal(code, 0, stderr)
  t.same(summaryOf(stdout).malloc, { setBy: 'MALLOC_TRIM_THRESHOLD_' })
  t.match(stderr, /"malloc":"set by MALLOC_TRIM_THRESHOLD_"/)
})

t.test('kill -9 at 10 moments of its progress: each restart resumes from the last complete checkpoint; final weights equal an uninterrupted run', async (t) => {
  // 5 epochs of 32 steps with a checkpoint every 4: an upload is in flight most of the time. Each
  // kill waits for an event in the run's own log, so that it lands on a running process whatever
  // the machine's load: at the start of training, mid-upload, and just after a commit.
  const args = ['--data', subset, ...base, '--epochs', '5', '--ckpt-every', '4']
  const ref = await o3train([...args, '--ckpt', `o3://${BUCKET}/runs/ref`]).done
  t.equal(ref.code, 0, ref.stderr)
  const refFinal = summaryOf(ref.stdout).checkpoints.at(-1)!
  t.equal(refFinal.step, 160)

  // The first start runs to its first commit, so that every later one has a checkpoint to resume.
  const killAfter = [
    '"msg":"checkpoint committed"',
    ...Array.from({ length: 9 }, (_, i) => ['"msg":"training"', '"msg":"checkpoint upload started"', '"msg":"checkpoint committed"'][i % 3]!),
  ]
  const chaos = store('runs/chaos')
  let lastStep = 0
  let kills = 0
  for (const [i, event] of killAfter.entries()) {
    const r = o3train([...args, '--ckpt', `o3://${BUCKET}/runs/chaos`])
    await r.waitFor('"msg":"training"')
    const resumedAt = Number(/"msg":"resumed"/.test(r.stderr()) ? /"step":(\d+),"position"/.exec(r.stderr())?.[1] : 0)
    t.equal(resumedAt, lastStep, `start ${i + 1} resumed from the last complete checkpoint (step ${lastStep})`)
    await r.waitFor(event)
    r.child.kill('SIGKILL')
    const { signal } = await r.done
    if (signal === 'SIGKILL') kills++
    if (await chaos.readLatest()) {
      const loaded = await chaos.load('latest') // verified against its sha256 and CID
      t.ok(loaded.meta.step >= lastStep, `latest never goes back (${loaded.meta.step} >= ${lastStep})`)
      lastStep = loaded.meta.step
    }
  }
  t.equal(kills, killAfter.length, 'every run was killed mid-run')
  const last = await o3train([...args, '--ckpt', `o3://${BUCKET}/runs/chaos`]).done
  t.equal(last.code, 0, last.stderr)
  t.ok(lastStep > 0, 'the killed runs committed checkpoints')
  t.equal(summaryOf(last.stdout).resumedFrom?.step, lastStep, 'the last start resumed from the last complete checkpoint')
  const final = await chaos.load('latest')
  t.equal(final.meta.step, 160)
  t.equal(final.entry.cid, refFinal.cid, 'the final checkpoint is byte-identical to the uninterrupted run (same CID)')
  t.same(await collect(client(`${BUCKET}/runs/chaos`).listMultipartUploads('')), [], 'no multipart upload is left behind')
})

async function collect<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = []
  for await (const x of it) out.push(x)
  return out
}

t.test("each epoch's read order is announced to the data's mount, which fetches ahead; a broken socket never stops training", async (t) => {
  const tree = buildImageFolder(join(scratch, 'announce-images'), { perClass: 6 })
  const n = tree.files.length
  await uploadDir(tree.root, `${BUCKET}/announced/images`)
  const args = ['--dataset', 'imagefolder', '--model', 'mlp', '--image-size', '28', '--channels', '1', '--batch', '8', '--epochs', '2']

  // --data o3://: to the mount the run starts, which reports what it made of it as it stops.
  const own = await o3train(['--data', `o3://${BUCKET}/announced/images`, ...args]).done
  t.equal(own.code, 0, own.stderr)
  const line = own.stderr.split('\n').find((l) => l.includes('files announced before the loader read them'))
  t.ok(line, 'o3train reports the announced order')
  const a = JSON.parse(line ?? '{}') as { files: number; refused: number; prefetched: number; skipped: number; used: number }
  t.equal(a.files, 2 * n, 'both epochs, every image')
  t.equal(a.refused, 0, 'none refused')
  t.equal(a.prefetched + a.skipped, 2 * n, 'each fetched ahead or passed over once its reader got there first')
  // How many the loader then read from there depends on who got to each file first (it starts at
  // once): mount-announce.test.ts checks that with the order announced before any read.
  t.ok(a.used <= a.prefetched, `the loader read ${a.used} of the ${a.prefetched} files the mount had fetched ahead`)

  // --mount-control: --data is a directory below the root of a mount started elsewhere.
  const sockDir = mkdtempSync(join(tmpdir(), 'o3train-sock-'))
  t.teardown(() => rmSync(sockDir, { recursive: true, force: true }))
  const sock = join(sockDir, 'control.sock')
  const m = await mount(t, info, BUCKET, { args: ['--control-socket', sock, '--metadata-ttl', 'indefinite'] })
  const data = join(m.mountpoint, 'announced', 'images')
  const told = await o3train(['--data', data, ...args, '--mount-control', sock]).done
  t.equal(told.code, 0, told.stderr)
  const s = await statsWhen(m, (s) => s.announced.files === 2 * n && s.announced.waiting === 0)
  t.equal(s.announced.refused, 0, 'paths made relative to the mount root')
  t.equal(s.announced.files, 2 * n, 'both epochs, every image')
  t.equal(s.announced.prefetched + s.announced.skipped, 2 * n, 'each fetched ahead or passed over')
  t.ok(s.announced.used <= s.announced.prefetched, `the loader read ${s.announced.used} of the ${s.announced.prefetched} files the mount had fetched ahead`)

  // A socket that is not there: trained all the same, said once.
  const missing = await o3train(['--data', data, ...args, '--mount-control', join(sockDir, 'missing.sock')]).done
  t.equal(missing.code, 0, missing.stderr)
  t.equal(missing.stderr.split('announcing the read order to the mount failed').length - 1, 1, 'one warning for two epochs')
  t.equal(summaryOf(missing.stdout).epochsCompleted, 2, 'both epochs trained')
})

t.test('the S3 server gone for 5 s during training: no error', async (t) => {
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const r = o3train(['--data', `o3://${BUCKET}/fmnist`, ...base, '--epochs', '8', '--ckpt', `o3://${BUCKET}/runs/outage`, '--ckpt-every', '4'], {
    O3_ENDPOINT: proxy.endpoint,
  })
  await r.waitFor('"msg":"checkpoint committed"')
  await proxy.outage(5000)
  const outageEnded = Date.now()
  const { code, stdout, stderr } = await r.done
  t.equal(code, 0, stderr)
  const commits = stderr
    .split('\n')
    .filter((l) => l.includes('"msg":"checkpoint committed"'))
    .map((l) => Date.parse((JSON.parse(l) as { time: string }).time))
  t.ok(
    commits.some((time) => time > outageEnded),
    'training went on through the outage: checkpoints committed after it ended',
  )
  t.match(stderr, /retrying O3 request/, 'requests failed during the outage and were retried')
  const s = summaryOf(stdout)
  t.equal(s.epochsCompleted, 8)
  t.equal((await store('runs/outage').load('latest')).meta.step, s.step, 'the last checkpoint committed and verifies')
})

t.test('the mount killed during training: a clear error; with the mount back, it resumes', async (t) => {
  const tree = buildImageFolder(join(scratch, 'images'), { perClass: 24 })
  await uploadDir(tree.root, `${BUCKET}/images`)
  const args = [
    '--dataset',
    'imagefolder',
    '--model',
    'resnet',
    '--image-size',
    '28',
    '--batch',
    '8',
    '--lr',
    '0.05',
    '--epochs',
    '40',
    '--ckpt',
    `o3://${BUCKET}/runs/img`,
    '--ckpt-every',
    '5',
  ]
  const m = await mount(t, info, `${BUCKET}/images`)
  const r = o3train(['--data', m.mountpoint, ...args])
  await r.waitFor('"msg":"checkpoint committed"')
  process.kill(m.pid, 'SIGKILL')
  const { code, stderr } = await r.done
  t.equal(code, 91, 'exits with the training-failure status')
  const last = stderr.trim().split('\n').at(-1)!
  // A read in flight when the daemon dies gets ECONNABORTED, later ones ENOTCONN: either names the dead mount.
  t.match(
    last,
    /^o3train: reading the data failed \(.*(Transport endpoint is not connected|Software caused connection abort); .*: ENOTCONN\): check the mount under .*, then rerun; --resume auto continues from the last checkpoint$/,
  )
  t.match(last, `(${m.mountpoint}/`, 'it names the file that could not be read')
  await m.stop()

  const again = await mount(t, info, `${BUCKET}/images`, { mountpoint: m.mountpoint })
  const r2 = o3train(['--data', again.mountpoint, ...args.map((a) => (a === '40' ? '1' : a))])
  await r2.waitFor('"msg":"resumed"')
  r2.child.kill('SIGINT')
  const done = await r2.done
  t.equal(done.code, 0, done.stderr)
  t.ok(summaryOf(done.stdout).resumedFrom, 'resumed from the checkpoint written before the mount died')
})

t.test('a stalled mount fails the start within the file-system deadline, naming it', async (t) => {
  const tree = buildImageFolder(join(scratch, 'images-stalled'), { perClass: 2 })
  await uploadDir(tree.root, `${BUCKET}/images-stalled`)
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  // The mount waits for the server as long as the proxy holds it (--op-timeout 10m): only
  // o3train's own deadline on file-system calls can end the wait.
  const m = await mount(t, info, `${BUCKET}/images-stalled`, { env: { O3_ENDPOINT: proxy.endpoint }, args: ['--op-timeout', '10m'] })
  proxy.stall(600_000)
  const r = o3train(['--data', m.mountpoint, '--dataset', 'imagefolder', '--model', 'mlp', '--image-size', '28', '--epochs', '1'])
  await r.waitFor('o3train: reading the data failed')
  // A FUSE request the mount has taken cannot be abandoned, even by a dying process: o3train's
  // listing threads, and so its exit, wait for the mount's answer, which the server now gives.
  proxy.clear()
  const { code, stderr } = await r.done
  t.equal(code, 91, stderr)
  t.match(stderr.trim().split('\n').at(-1), /^o3train: reading the data failed \(.* did not answer within 10 s; is the mount stalled\?.*: ETIMEDOUT\)/)
})

t.test('SIGINT: stop at a step boundary, final checkpoint, exit 0; a second signal exits at once, nothing half-written', async (t) => {
  const r = o3train(['--data', subset, ...base, '--epochs', '50', '--ckpt', `o3://${BUCKET}/runs/sigint`, '--ckpt-every', 'epoch'])
  // Once an epoch is done the run has steps to stop after.
  await r.waitFor('"msg":"epoch done"')
  r.child.kill('SIGINT')
  const { code, stdout, stderr } = await r.done
  t.equal(code, 0, stderr)
  const s = summaryOf(stdout)
  t.equal(s.stopped, true)
  t.ok(s.step > 0 && s.step < 50 * 32)
  t.equal((await store('runs/sigint').load('latest')).meta.step, s.step, 'the final checkpoint is at the step where it stopped')

  // Checkpoints go through a proxy that can hold them, so that an upload is surely in flight when
  // the second signal comes, however fast the stop after the first one would otherwise be.
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  const r2 = o3train(['--data', subset, ...base, '--epochs', '50', '--ckpt', `o3://${BUCKET}/runs/sigint2`, '--ckpt-every', '2'], {
    O3_ENDPOINT: proxy.endpoint,
  })
  // One checkpoint committed and the next one uploading when the signals come.
  await r2.waitFor('"msg":"checkpoint committed"')
  await r2.waitFor('"msg":"checkpoint upload started"', undefined, 2)
  proxy.stall(600_000)
  r2.child.kill('SIGINT')
  await r2.waitFor('"msg":"stopping at the next step boundary')
  r2.child.kill('SIGINT')
  // The upload is aborted by then; the abort itself needs the server.
  await r2.waitFor('"msg":"exiting now')
  proxy.clear()
  const d2 = await r2.done
  t.equal(d2.code, 130, 'a second signal exits at once')
  t.same(await collect(client(`${BUCKET}/runs/sigint2`).listMultipartUploads('')), [], 'the upload in flight was aborted')
  t.ok((await store('runs/sigint2').load('latest')).meta.step > 0, 'latest points at a complete, verified checkpoint')
})

t.test('a clean-up that fails does not hide the training error', async (t) => {
  // Training data without the test split: the run fails at its first evaluation, after the mount is up.
  const trainOnly = join(scratch, 'train-only')
  mkdirSync(trainOnly)
  for (const f of ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz']) copyFileSync(join(subset, f), join(trainOnly, f))
  await uploadDir(trainOnly, `${BUCKET}/train-only`)
  const tmp = mkdtempSync(join(tmpdir(), 'o3train-tmp-'))
  const frozen: string[] = []
  const unfreeze = () => frozen.splice(0).forEach((d) => execFileSync('chattr', ['-i', d]))
  const r = o3train(['--data', `o3://${BUCKET}/train-only`, ...base, '--epochs', '1'], { TMPDIR: tmp })
  t.teardown(async () => {
    unfreeze()
    if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL')
    await r.done
    // Its mount goes when o3train does; a lazy unmount covers a mount that has not noticed yet.
    for (const d of readdirSync(tmp).filter((n) => n.startsWith('o3train-run-'))) spawnSync('fusermount', ['-u', '-z', join(tmp, d, 'data')])
    rmSync(tmp, { recursive: true, force: true })
  })
  await r.waitFor('"msg":"training"', 600_000)
  // The mountpoint lives in the run's directory under TMPDIR: made immutable, removing the mountpoint fails.
  const runDir = join(tmp, readdirSync(tmp).find((n) => n.startsWith('o3train-run-'))!)
  execFileSync('chattr', ['+i', runDir])
  frozen.push(runDir)
  const { code, stderr } = await r.done
  unfreeze()
  t.equal(code, 91, stderr)
  t.match(stderr, /"msg":"could not clean up the mount for this run"/, 'the clean-up failure is reported')
  // The warning is logged asynchronously, so it may land after the error line: look for the error by its prefix.
  const errors = stderr.split('\n').filter((l) => l.startsWith('o3train: '))
  t.equal(errors.length, 1, 'one error line')
  t.match(errors[0], /^o3train: .*t10k-.*not found/, 'it is the training error')
  t.notMatch(errors[0], /EPERM|rmdir/, 'not the clean-up failure')
})

t.test('bad input: one line, a distinct exit code, no secret printed, in either log format', async (t) => {
  const cases: [string[], number, RegExp][] = [
    [['--data', subset, '--epochs', '0'], 64, /--epochs must be a positive integer/],
    [['--data', subset, '--ckpt', 'bucket/x'], 64, /--ckpt must look like o3:\/\/bucket\/prefix\/run/],
    [['--epochs', '1'], 64, /--data is required/],
    [['--data', join(scratch, 'nowhere')], 91, /no Fashion-MNIST files/],
    [['--data', subset, '--test-data', join(scratch, 'nowhere')], 91, /--test-data .*nowhere: no such directory/],
    [['--data', subset, '--test-data', `o3://${BUCKET}/fmnist`], 64, /--test-data takes a directory/],
    [['--data', subset, '--ckpt', `o3://no-such-bucket-x/run`], 66, /not found/],
    [['--data', `o3://${BUCKET}/fmnist`, '--mount-control', '/tmp/x.sock'], 64, /--mount-control is for --data on a mount started elsewhere/],
  ]
  for (const format of ['json', 'pretty']) {
    for (const [args, exitCode, message] of cases) {
      const { code, stderr, stdout } = await o3train([...args, '--log-format', format]).done
      t.equal(code, exitCode, `${format}: ${args.join(' ')} -> ${exitCode}`)
      t.match(stderr.trim().split('\n').at(-1), message)
      t.notOk(`${stdout}${stderr}`.includes(info.secretAccessKey), 'the secret key is not printed')
    }
    const bad = await o3train(['--data', subset, '--ckpt', `o3://${BUCKET}/runs/badkey`, '--log-format', format], { O3_SECRET_ACCESS_KEY: 'definitely-wrong' })
      .done
    t.equal(bad.code, 77)
    t.match(bad.stderr, /rejected the credentials/)
    t.notOk(bad.stderr.includes('definitely-wrong'))
  }
})
