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
import { mount, mountEnv, isMounted } from './support/o3mount.js'
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
  const mountpoint = /"mountpoint":"([^"]+)"/.exec(stderr)?.[1]
  t.ok(mountpoint, 'it said where it mounted the data')
  t.notOk(isMounted(mountpoint!), 'unmounted at exit')
  const latest = await store('runs/basic').load('latest')
  t.equal(latest.entry.cid, s.checkpoints[1]!.cid, 'latest is the final checkpoint, verified')
  t.equal(latest.meta.step, 64)
  t.equal(latest.record.signer, '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266', 'o3train itself signed with the key')
})

t.test('kill -9 at 10 random moments: each restart resumes from the last complete checkpoint; final weights equal an uninterrupted run', async (t) => {
  // 5 epochs of 32 steps with a checkpoint every 4: an upload is in flight most of the time, so
  // the kills land mid-step, mid-upload and between commit steps.
  const args = ['--data', subset, ...base, '--epochs', '5', '--ckpt-every', '4']
  const ref = await o3train([...args, '--ckpt', `o3://${BUCKET}/runs/ref`]).done
  t.equal(ref.code, 0, ref.stderr)
  const refFinal = summaryOf(ref.stdout).checkpoints.at(-1)!
  t.equal(refFinal.step, 160)

  const chaos = store('runs/chaos')
  let lastStep = 0
  let kills = 0
  for (let i = 0; i < 10; i++) {
    const r = o3train([...args, '--ckpt', `o3://${BUCKET}/runs/chaos`])
    // The first start runs to its first commit, so that every later one has a checkpoint to resume.
    await r.waitFor(i === 0 ? '"msg":"checkpoint committed"' : '"msg":"training"')
    const resumedAt = Number(/"msg":"resumed"/.test(r.stderr()) ? /"step":(\d+),"position"/.exec(r.stderr())?.[1] : 0)
    t.equal(resumedAt, lastStep, `start ${i + 1} resumed from the last complete checkpoint (step ${lastStep})`)
    await new Promise((res) => setTimeout(res, 150 + Math.random() * 600))
    r.child.kill('SIGKILL')
    const { signal } = await r.done
    if (signal === 'SIGKILL') kills++
    if (await chaos.readLatest()) {
      const loaded = await chaos.load('latest') // verified against its sha256 and CID
      t.ok(loaded.meta.step >= lastStep, `latest never goes back (${loaded.meta.step} >= ${lastStep})`)
      lastStep = loaded.meta.step
    }
  }
  t.ok(kills >= 8, `${kills} of 10 runs were killed mid-run`)
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

t.test('SIGINT: stop at a step boundary, final checkpoint, exit 0; a second signal exits at once, nothing half-written', async (t) => {
  const r = o3train(['--data', subset, ...base, '--epochs', '50', '--ckpt', `o3://${BUCKET}/runs/sigint`, '--ckpt-every', 'epoch'])
  await r.waitFor('"msg":"training"')
  await new Promise((res) => setTimeout(res, 1500))
  r.child.kill('SIGINT')
  const { code, stdout, stderr } = await r.done
  t.equal(code, 0, stderr)
  const s = summaryOf(stdout)
  t.equal(s.stopped, true)
  t.ok(s.step > 0 && s.step < 50 * 32)
  t.equal((await store('runs/sigint').load('latest')).meta.step, s.step, 'the final checkpoint is at the step where it stopped')

  const r2 = o3train(['--data', subset, ...base, '--epochs', '50', '--ckpt', `o3://${BUCKET}/runs/sigint2`, '--ckpt-every', '2'])
  // One checkpoint committed and the next one uploading when the signals come.
  await r2.waitFor('"msg":"checkpoint committed"')
  await r2.waitFor('"msg":"checkpoint upload started"', undefined, 2)
  r2.child.kill('SIGINT')
  await new Promise((res) => setTimeout(res, 20))
  r2.child.kill('SIGINT')
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
  const unfreeze = () => execFileSync('chattr', ['-i', tmp])
  const r = o3train(['--data', `o3://${BUCKET}/train-only`, ...base, '--epochs', '1'], { TMPDIR: tmp })
  t.teardown(async () => {
    unfreeze()
    if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL')
    await r.done
    // Its mount goes when o3train does; a lazy unmount covers a mount that has not noticed yet.
    for (const d of readdirSync(tmp).filter((n) => n.startsWith('o3train-data-'))) spawnSync('fusermount', ['-u', '-z', join(tmp, d)])
    rmSync(tmp, { recursive: true, force: true })
  })
  await r.waitFor('"msg":"training"', 600_000)
  // The mountpoint lives in TMPDIR: made immutable, removing the mountpoint fails.
  execFileSync('chattr', ['+i', tmp])
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
