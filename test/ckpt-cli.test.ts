import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { signerFromHex } from '../lib/content/signer.js'
import { CheckpointWriter, dataKey } from '../checkpoint/index.js'
import { startFaultProxy } from './support/fault-proxy.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { until } from './support/until.js'
import { o3ckptOn } from './fixtures/ckpt-put.js'
import { openClient, syntheticState, tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20
const info = await useS3Server(t)
const bucket = `ckpt-cli-${process.pid}`
await createBucket(info, bucket)
const run = `o3://${bucket}/runs/cli`

function o3ckpt(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--no-warnings', '--import', 'tsx', 'checkpoint/cli.ts', ...args],
      {
        env: { PATH: process.env.PATH, HOME: process.env.HOME, ...serverEnv(info) },
      },
      (err, stdout, stderr) => resolve({ code: err ? (err.code as number) : 0, stdout, stderr }),
    )
  })
}

const client = openClient(t, info, `${bucket}/runs/cli`)
const writer = await CheckpointWriter.open(client, {
  localDir: tempDir(t),
  partSize: 5 * MiB,
  parallel: 2,
  signer: signerFromHex('ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80', 'test'),
})
const first = await writer.save(syntheticState([3 * MiB]), { step: 10, epoch: 0, model: 'cli-model', config: { a: 1 } })
const second = await writer.save(syntheticState([6 * MiB + 4]), { step: 20, epoch: 1, model: 'cli-model' })

t.test('ls shows every checkpoint with its CID, size and signer, and marks latest', async (t) => {
  const r = await o3ckpt('ls', run)
  t.equal(r.code, 0, r.stderr)
  const lines = r.stdout.trimEnd().split('\n')
  t.equal(lines.length, 2)
  t.match(lines[0], new RegExp(`^  step-0000000010 .*${first.record.cid}.*0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266`))
  t.match(lines[1], new RegExp(`^\\* step-0000000020 .*6\\.0 MiB.*${second.record.cid}`))
})

t.test('show prints the record, metadata and tensor table', async (t) => {
  const r = await o3ckpt('show', run, first.record.cid)
  t.equal(r.code, 0, r.stderr)
  const shown = JSON.parse(r.stdout)
  t.equal(shown.record.cid, first.record.cid)
  t.same(shown.metadata, { format: 'pt', step: '10', epoch: '0', model: 'cli-model', config: '{"a":1}' })
  t.same(shown.tensors, [{ name: 'layer0.weight', dtype: 'F32', shape: [(3 * MiB) / 4], bytes: 3 * MiB, elementBytes: 4 }])
})

t.test('get writes a verified file; verify checks all', async (t) => {
  const dir = tempDir(t)
  const out = path.join(dir, 'ck.safetensors')
  const r = await o3ckpt('get', run, 'latest', '-o', out)
  t.equal(r.code, 0, r.stderr)
  t.equal(createHash('sha256').update(readFileSync(out)).digest('hex'), second.record.sha256)
  const v = await o3ckpt('verify', run)
  t.equal(v.code, 0, v.stderr)
  t.match(v.stdout, /^OK {4}step-0000000010 .*signed by 0xf39F/m)
  t.match(v.stdout, /^OK {4}step-0000000020 /m)
})

t.test('get stopped by SIGINT midway: exit 130, one line, neither the file nor a partial one is left', async (t) => {
  const dir = tempDir(t)
  // Through a proxy at 256 KiB/s the 3 MiB download takes seconds: it is surely in flight when the signal comes.
  const proxy = await startFaultProxy({ targetPort: Number(new URL(info.endpoint).port) })
  t.teardown(() => proxy.close())
  proxy.setBandwidth(256 << 10)
  const partial = () => readdirSync(dir).filter((f) => f.endsWith('.partial') && statSync(path.join(dir, f)).size > 0)
  const r = await o3ckptOn(info)(['get', run, first.entry.name, '-o', path.join(dir, 'ck.safetensors')], { O3_ENDPOINT: proxy.endpoint }, (child) => {
    t.teardown(() => child.kill('SIGKILL'))
    until(() => partial().length > 0, 'the download to start writing')
      .then(() => child.kill('SIGINT'))
      .catch(() => child.kill('SIGKILL'))
  })
  t.equal(r.code, ExitCode.interrupted, r.stderr)
  t.match(r.stderr, /^o3ckpt: stopped by SIGINT: nothing was written\n$/)
  t.same(readdirSync(dir), [], 'no file, no .partial')
})

t.test('a corrupted checkpoint: verify and get fail with the integrity exit code, no file appears', async (t) => {
  const key = dataKey(second.entry.name)
  const bytes = await client.getBytes(key, 0, second.record.size)
  bytes[12345]! ^= 0x80
  await client.put(key, bytes)
  const v = await o3ckpt('verify', run)
  t.equal(v.code, 65)
  t.match(v.stdout, /^OK {4}step-0000000010/m)
  t.match(v.stdout, /^FAIL {2}step-0000000020 .*does not match/m)
  const dir = tempDir(t)
  const g = await o3ckpt('get', run, 'step-0000000020', '-o', path.join(dir, 'bad.safetensors'))
  t.equal(g.code, 65)
  t.match(g.stderr, /^o3ckpt: .*sha256/)
  t.equal(g.stderr.trim().split('\n').length, 1, 'one-line error')
  t.same(readdirSync(dir), [], 'neither the file nor a partial one is left')
})

t.test('usage and lookup errors', async (t) => {
  t.equal((await o3ckpt('ls', 'bucket-without-scheme')).code, 64)
  const missing = await o3ckpt('show', run, 'step-0000000099')
  t.equal(missing.code, 66)
  t.match(missing.stderr, /no checkpoint "step-0000000099"/)
  t.equal((await o3ckpt('frobnicate')).code, 64)
  t.notOk(existsSync('step-0000000099.safetensors'))
})
