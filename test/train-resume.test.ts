// o3train restarted on a run it has checkpointed: from an earlier checkpoint than `latest` (by
// --resume, or the fallback past one that fails verification) it saves the later steps again;
// option errors and a run without its manifest exit with their own status. Real S3 server, the
// real trainer on 256 Fashion-MNIST samples (4 steps an epoch at batch 64), a checkpoint each step.
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { cliCommand } from '../lib/paths.js'
import { CheckpointStore, dataKey, type Manifest } from '../checkpoint/index.js'
import { createBucket, serverClient, serverEnv, useS3Server } from './support/s3-server.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { readAll } from './support/objects.js'

const BUCKET = `train-resume-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const scratch = mkdtempSync(join(tmpdir(), 'o3train-resume-'))
t.teardown(() => rmSync(scratch, { recursive: true, force: true }))
const data = join(scratch, 'fmnist')
writeFashionSubset(data, 256, 64)

// Unsigned runs, whatever the environment holds.
const env = Object.fromEntries(Object.entries({ ...process.env, ...serverEnv(info) }).filter(([k]) => !/^(AKAVE_|O3_TRUSTED_SIGNERS)/.test(k)))
const cli = cliCommand('trainer/cli.ts')

function o3train(run: string, ...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const all = ['--data', data, '--model', 'mlp', '--batch', '64', '--seed', '3', '--threads', '1', '--no-evaluate', '--ckpt-every', '1', '--keep-last', '100']
  const child = spawn(process.execPath, [...cli.execArgv, cli.file, ...all, '--ckpt', `o3://${BUCKET}/${run}`, ...args], { cwd: scratch, env })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d))
  child.stderr.on('data', (d: Buffer) => (stderr += d))
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })))
}

interface Summary {
  step: number
  resumedFrom?: { name: string; step: number }
  checkpoints: { name: string; cid: string; step: number }[]
}
const summaryOf = (stdout: string): Summary => JSON.parse(stdout.trim().split('\n').at(-1)!) as Summary
const lastLine = (stderr: string): string => stderr.trim().split('\n').at(-1) ?? ''

function runClient(t: Test, run: string) {
  const client = serverClient(info, `${BUCKET}/${run}`)
  t.teardown(() => client.close())
  return client
}

async function manifestOf(client: ReturnType<typeof serverClient>): Promise<Manifest> {
  return JSON.parse((await readAll(client, 'manifest.json')).toString('utf8')) as Manifest
}

t.test('resumed by --resume from an earlier checkpoint than latest, the run saves the later steps again and goes on', async (t) => {
  const first = await o3train('branch', '--epochs', '1')
  t.equal(first.code, 0, lastLine(first.stderr))
  const client = runClient(t, 'branch')
  const again = await o3train('branch', '--epochs', '2', '--resume', 'step-0000000002')
  t.equal(again.code, 0, `--resume step-0000000002 of a run at step 4: ${lastLine(again.stderr)}`)
  const s = summaryOf(again.stdout)
  t.equal(s.resumedFrom?.step, 2)
  t.same(
    s.checkpoints.map((c) => c.step),
    [3, 4, 5, 6, 7, 8],
    'steps 3 and 4 saved again, and on past them',
  )
  t.match(again.stderr, /"msg":"latest moved back to the checkpoint this run resumed from/)
  t.equal((await new CheckpointStore(client).load('latest')).meta.step, 8, 'latest is the last save, verified')
  const manifest = await manifestOf(client)
  t.same(
    manifest.checkpoints.map((e) => e.step),
    [1, 2, 3, 4, 5, 6, 7, 8],
    'one entry a step',
  )
  t.same(
    manifest.checkpoints.slice(2).map((e) => e.cid),
    s.checkpoints.map((c) => c.cid),
    "steps 3 and 4 are this run's saves",
  )
})

t.test('resumed past a latest that fails verification, the run saves its step again', async (t) => {
  const first = await o3train('fallback', '--epochs', '1')
  t.equal(first.code, 0, lastLine(first.stderr))
  const client = runClient(t, 'fallback')
  const latest = await new CheckpointStore(client).load('latest')
  await client.put(dataKey('step-0000000004'), Buffer.alloc(latest.entry.size, 7))
  const again = await o3train('fallback', '--epochs', '1')
  t.equal(again.code, 0, `after the fallback from step 4 to step 3: ${lastLine(again.stderr)}`)
  t.equal(summaryOf(again.stdout).resumedFrom?.step, 3)
  t.same(
    summaryOf(again.stdout).checkpoints.map((c) => c.step),
    [4],
  )
  t.equal((await new CheckpointStore(client).load('latest')).entry.cid, latest.entry.cid, 'step 4 saved again, byte-identical to the first save (same CID)')
})

t.test('option errors exit 64: --resume none on a run with checkpoints, another global batch', async (t) => {
  const first = await o3train('options', '--epochs', '1')
  t.equal(first.code, 0, lastLine(first.stderr))
  const none = await o3train('options', '--epochs', '1', '--resume', 'none')
  t.equal(none.code, 64, lastLine(none.stderr))
  t.match(lastLine(none.stderr), /^o3train: o3:\/\/.*\/options already has 4 checkpoints; use --resume auto/)
  const batch = await o3train('options', '--epochs', '2', '--batch', '32')
  t.equal(batch.code, 64, lastLine(batch.stderr))
  t.match(lastLine(batch.stderr), /^o3train: step-0000000004 was trained with a global batch of 64 \(batch x ranks\), this run has 32/)
})

t.test('manifest.json deleted from a run with checkpoints: exit 65, one line, nothing deleted', async (t) => {
  const first = await o3train('no-manifest', '--epochs', '1')
  t.equal(first.code, 0, lastLine(first.stderr))
  const client = runClient(t, 'no-manifest')
  const objects = async () => {
    const out: string[] = []
    for await (const o of client.list('')) if (o.type === 'object') out.push(o.key)
    return out.sort()
  }
  await client.delete('manifest.json')
  const before = await objects()
  const r = await o3train('no-manifest', '--epochs', '2')
  t.equal(r.code, 65, lastLine(r.stderr))
  t.match(lastLine(r.stderr), /^o3train: o3:\/\/.*\/manifest\.json is missing but latest names step-0000000004: .* \(nothing was deleted\)$/)
  t.same(await objects(), before, 'every checkpoint and latest still there')
})
