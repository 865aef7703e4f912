// Trust and untrusted control objects: a checkpoint re-signed by another key or stripped of its
// signature is refused (resume falls back and says so; o3ckpt verify/get fail), and forged or
// oversized manifests, pointers and sidecars fail with one line before anything is sized by them.
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { signerFromHex } from '../lib/content/signer.js'
import { O3IntegrityError, O3UsageError, type O3Client } from '../lib/o3/index.js'
import { CheckpointStore, CheckpointWriter, TrustPolicy, sidecarKey, type Manifest } from '../checkpoint/index.js'
import { CONTROL_OBJECT_MAX } from '../checkpoint/store.js'
import type { CheckpointRecord } from '../checkpoint/records.js'
import { formatSidecar } from '../lib/content/sidecar.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { readAll } from './support/objects.js'
import { capture, openClient, syntheticState, tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20
const OWNER = signerFromHex('ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80', 'owner key')
const ATTACKER = signerFromHex('59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d', 'attacker key')
const info = await useS3Server(t)
const bucket = `ckpt-trust-${process.pid}`
await createBucket(info, bucket)

function o3ckpt(env: Record<string, string>, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--no-warnings', '--import', 'tsx', 'checkpoint/cli.ts', ...args],
      {
        env: { PATH: process.env.PATH, HOME: process.env.HOME, ...serverEnv(info), ...env },
      },
      (err, stdout, stderr) => resolve({ code: err ? (err.code as number) : 0, stdout, stderr }),
    )
  })
}

const meta = (step: number) => ({ step, epoch: 0, model: 'm' })

async function readManifest(client: O3Client): Promise<Manifest> {
  return JSON.parse((await readAll(client, 'manifest.json')).toString('utf8')) as Manifest
}

/** Rewrites a checkpoint's sidecar and manifest entry consistently, as someone with write access to the bucket can. */
async function rewrite(client: O3Client, name: string, edit: (r: CheckpointRecord) => CheckpointRecord): Promise<void> {
  const text = (await readAll(client, sidecarKey(name))).toString('utf8')
  const record = edit(JSON.parse(text.slice(text.indexOf('\n') + 1)) as CheckpointRecord)
  await client.put(sidecarKey(name), formatSidecar(record))
  const manifest = await readManifest(client)
  const entry = manifest.checkpoints.find((e) => e.name === name)!
  if (record.signer === undefined) delete entry.signer
  else entry.signer = record.signer
  await client.put('manifest.json', JSON.stringify(manifest))
}

/** The refusal of trust on first use in a run whose sidecars verify to both keys, in either order. */
const BOTH = `(${OWNER.address}|${ATTACKER.address})`
const TWO_KEYS = new RegExp(
  `signed by 2 different keys \\(${BOTH}, ${BOTH}\\), so trust on first use cannot tell which is the run's; name the signer to trust with --trust-signer`,
)

t.test('a checkpoint re-signed by another key: trust on first use refuses the run, naming both keys, until --trust-signer names one', async (t) => {
  const location = `${bucket}/resigned`
  const client = openClient(t, info, location)
  const owner = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, signer: OWNER })
  const good = syntheticState([MiB])
  await owner.save(good, meta(1))
  // Someone with write access to the bucket commits forged weights under their own key.
  const forger = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, signer: ATTACKER })
  await forger.save(syntheticState([MiB]), meta(2))

  const store = new CheckpointStore(client)
  await t.rejects(store.resume(), { constructor: O3IntegrityError, message: TWO_KEYS })
  await t.rejects(store.load('latest'), { constructor: O3IntegrityError, message: TWO_KEYS })

  // Naming the other signer is how a user accepts it, by flag or environment.
  t.equal((await store.resume({ trust: TrustPolicy.fromFlags([ATTACKER.address], {}) }))?.entry.name, 'step-0000000002')
  t.equal(
    (await store.resume({ trust: TrustPolicy.fromFlags([], { O3_TRUSTED_SIGNERS: `${OWNER.address}, ${ATTACKER.address}` }) }))?.entry.name,
    'step-0000000002',
  )
  const { logger, warnings } = capture()
  const resumed = await new CheckpointStore(client, logger).resume({ trust: TrustPolicy.fromFlags([OWNER.address], {}) })
  t.equal(resumed?.entry.name, 'step-0000000001', "naming the owner resumes from the owner's checkpoint")
  t.ok(resumed!.tensors[0]!.data.equals(good[0]!.data))
  t.match(warnings().find((w) => w.checkpoint === 'step-0000000002')?.err, `signed by ${ATTACKER.address}, but the trusted signer is ${OWNER.address}`)

  const run = `o3://${location}`
  const v = await o3ckpt({}, 'verify', run)
  t.equal(v.code, 65, 'verify fails with the integrity status')
  t.match(v.stdout, new RegExp(`^FAIL {2}step-0000000001 .*${TWO_KEYS.source}`, 'm'))
  t.match(v.stdout, new RegExp(`^FAIL {2}step-0000000002 .*${TWO_KEYS.source}`, 'm'))
  t.match((await o3ckpt({}, 'verify', run, '--trust-signer', OWNER.address)).stdout, /^OK {4}step-0000000001 .*signed by 0xf39F/m)
  const dir = tempDir(t)
  const out = path.join(dir, 'latest.safetensors')
  const g = await o3ckpt({}, 'get', run, 'latest', '-o', out)
  t.equal(g.code, 65)
  t.equal(g.stderr.trim().split('\n').length, 1, 'one-line error')
  t.match(g.stderr, TWO_KEYS)
  t.notOk(existsSync(out))
  t.equal((await o3ckpt({}, 'get', run, 'latest', '-o', out, '--trust-signer', ATTACKER.address)).code, 0, '--trust-signer accepts it')
  t.equal((await o3ckpt({ O3_TRUSTED_SIGNERS: ATTACKER.address }, 'verify', run, 'latest')).code, 0, 'so does O3_TRUSTED_SIGNERS')
  const owners = await o3ckpt({}, 'verify', run, 'latest', '--trust-signer', OWNER.address)
  t.equal(owners.code, 65, 'a named signer is required even when the run was signed by another')
  const bad = await o3ckpt({}, 'verify', run, '--trust-signer', '0x1234')
  t.equal(bad.code, 64)
  t.match(bad.stderr, /--trust-signer "0x1234" is not an address/)
  t.throws(() => TrustPolicy.fromFlags([], { O3_TRUSTED_SIGNERS: 'nobody' }), O3UsageError)
})

t.test("a step-0 checkpoint signed by another key does not make that key the run's", async (t) => {
  const location = `${bucket}/step-zero`
  const client = openClient(t, info, location)
  const owner = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, signer: OWNER })
  await owner.save(syntheticState([MiB]), meta(1))
  await owner.save(syntheticState([MiB]), meta(2))
  // With write access to the bucket: a checkpoint sorting before every other, and forged weights as the newest.
  const forger = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, signer: ATTACKER })
  await forger.save(syntheticState([MiB]), meta(0))
  await forger.save(syntheticState([MiB]), meta(3))

  await t.rejects(new CheckpointStore(client).resume(), { constructor: O3IntegrityError, message: TWO_KEYS })
  const g = await o3ckpt({}, 'get', `o3://${location}`, 'latest', '-o', path.join(tempDir(t), 'x.safetensors'))
  t.equal(g.code, 65, 'get refuses with the integrity status')
  t.match(g.stderr, TWO_KEYS)
  const resumed = await new CheckpointStore(client).resume({ trust: TrustPolicy.fromFlags([OWNER.address], {}) })
  t.equal(resumed?.entry.name, 'step-0000000002', "--trust-signer resumes from the owner's newest")
})

t.test('a checkpoint stripped of its signature is refused once the run is signed', async (t) => {
  const location = `${bucket}/stripped`
  const client = openClient(t, info, location)
  const owner = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, signer: OWNER })
  await owner.save(syntheticState([MiB]), meta(1))
  await owner.save(syntheticState([MiB]), meta(2))
  // Sidecar and manifest agree that step 2 is unsigned: only the trust policy can object.
  await rewrite(client, 'step-0000000002', ({ signer: _s, signature: _sig, ...rest }) => rest as CheckpointRecord)

  const { logger, warnings } = capture()
  const store = new CheckpointStore(client, logger)
  t.equal((await store.resume())?.entry.name, 'step-0000000001')
  t.match(warnings().find((w) => w.checkpoint === 'step-0000000002')?.err, `unsigned, but this run's signer`)
  const v = await o3ckpt({}, 'verify', `o3://${location}`, 'step-0000000002')
  t.equal(v.code, 65)
  t.match(v.stdout, /^FAIL {2}step-0000000002 .*unsigned, but/m)
  const g = await o3ckpt({}, 'get', `o3://${location}`, 'latest', '-o', path.join(tempDir(t), 'x.safetensors'))
  t.equal(g.code, 65)
  t.match(g.stderr, /unsigned, but this run's signer .* is 0xf39F/)
})

t.test('signers stripped from the manifest and the newest sidecar do not make a signed run unsigned', async (t) => {
  const location = `${bucket}/stripped-manifest`
  const client = openClient(t, info, location)
  const owner = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, signer: OWNER })
  await owner.save(syntheticState([MiB]), meta(1))
  await owner.save(syntheticState([MiB]), meta(2))
  // Plain JSON edits, as anyone with write access to the bucket can make them: the newest
  // sidecar loses its signature, and the manifest forgets that anything was ever signed.
  const sidecar = (await readAll(client, sidecarKey('step-0000000002'))).toString('utf8')
  const { signer: _s, signature: _sig, ...unsigned } = JSON.parse(sidecar.slice(sidecar.indexOf('\n') + 1)) as CheckpointRecord
  await client.put(sidecarKey('step-0000000002'), `${unsigned.cid}\n${JSON.stringify(unsigned)}\n`)
  const manifest = await readManifest(client)
  for (const e of manifest.checkpoints) delete e.signer
  await client.put('manifest.json', JSON.stringify(manifest))

  // The run's signer comes from step 1's sidecar, whose signature still verifies: step 2 is
  // refused as unsigned, and step 1 because its sidecar and the manifest disagree.
  const { logger, warnings } = capture()
  const store = new CheckpointStore(client, logger)
  await t.rejects(store.resume(), { constructor: O3IntegrityError, message: /no checkpoint passes verification/ })
  t.match(
    warnings().find((w) => w.checkpoint === 'step-0000000002')?.err,
    `unsigned, but this run's signer (trusted on first use; name another with --trust-signer) is ${OWNER.address}`,
  )
  t.match(warnings().find((w) => w.checkpoint === 'step-0000000001')?.err, `sidecar disagrees with the manifest (signer ${OWNER.address} vs none)`)

  const run = `o3://${location}`
  const g = await o3ckpt({}, 'get', run, 'latest', '-o', path.join(tempDir(t), 'x.safetensors'))
  t.equal(g.code, 65, `get: ${g.stderr}`)
  t.match(g.stderr, /unsigned, but this run's signer .* is 0xf39F/)
  const v = await o3ckpt({}, 'verify', run)
  t.equal(v.code, 65, 'verify')
  t.match(v.stdout, /^FAIL {2}step-0000000001 .*sidecar disagrees with the manifest \(signer 0xf39F\w+ vs none\)/m)
  t.match(v.stdout, /^FAIL {2}step-0000000002 .*unsigned, but/m)
  const ls = await o3ckpt({}, 'ls', run)
  t.equal(ls.code, 65, `ls fails with the integrity status once it has listed everything: ${ls.stderr}`)
  t.match(ls.stdout, /^ {2}step-0000000001 .*sidecar disagrees with the manifest \(signer 0xf39F\w+ vs none\)/m)
  t.match(ls.stdout, /^\* step-0000000002 .*unsigned/m)
  t.match(ls.stderr, /^o3ckpt: .*1 checkpoint's sidecar disagrees with manifest\.json/)
  const lsJson = await o3ckpt({}, '--json', 'ls', run)
  t.equal(lsJson.code, 65)
  const listed = JSON.parse(lsJson.stdout) as { checkpoints: { name: string; problem?: string }[] }
  t.match(listed.checkpoints.find((c) => c.name === 'step-0000000001')?.problem, /sidecar disagrees with the manifest/)

  // Naming the signer does not help either: the manifest still disagrees with step 1's sidecar.
  t.equal((await o3ckpt({}, 'verify', run, 'step-0000000001', '--trust-signer', OWNER.address)).code, 65)
  // An untouched run lists cleanly.
  const clean = openClient(t, info, `${bucket}/clean`)
  await (await CheckpointWriter.open(clean, { localDir: tempDir(t), partSize: 5 * MiB, signer: OWNER })).save(syntheticState([MiB]), meta(1))
  const ok = await o3ckpt({}, 'ls', `o3://${bucket}/clean`)
  t.equal(ok.code, 0, ok.stderr)
  t.match(ok.stdout, new RegExp(`^\\* step-0000000001 .*${OWNER.address}`, 'm'))
})

t.test('a run that never signed anything loads unsigned checkpoints', async (t) => {
  const client = openClient(t, info, `${bucket}/unsigned`)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, signer: null })
  await writer.save(syntheticState([MiB]), meta(1))
  t.equal((await new CheckpointStore(client).resume())?.entry.name, 'step-0000000001')
})

t.test('control objects are checked before they are believed', async (t) => {
  const client = openClient(t, info, `${bucket}/control`)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, signer: null })
  await writer.save(syntheticState([MiB]), meta(1))
  const manifest = await readManifest(client)
  const latest = (await readAll(client, 'latest')).toString('utf8')
  const sidecar = (await readAll(client, sidecarKey('step-0000000001'))).toString('utf8')
  const store = new CheckpointStore(client)
  const restore = async () => {
    await client.put('manifest.json', JSON.stringify(manifest))
    await client.put('latest', latest)
    await client.put(sidecarKey('step-0000000001'), sidecar)
  }
  const entry = (over: Record<string, unknown>): string => JSON.stringify({ ...manifest, checkpoints: [{ ...manifest.checkpoints[0], ...over }] })
  const size = manifest.checkpoints[0]!.size
  // A forger who rewrites sidecar and manifest alike: only the object's own length can tell.
  const forgedSize = (n: number): [string, string][] => [
    ['manifest.json', entry({ size: n })],
    [sidecarKey('step-0000000001'), sidecar.replace(`"size":${size},`, `"size":${n},`)],
  ]
  const cases: [string, [string, string][], RegExp][] = [
    ['a forged size (a petabyte)', forgedSize(2 ** 50), new RegExp(`is ${size} bytes but manifest\\.json records 1125899906842624`)],
    ['a size one byte short', forgedSize(size - 1), new RegExp(`is ${size} bytes but manifest\\.json records ${size - 1}`)],
    ['a negative size', [['manifest.json', entry({ size: -1 })]], /manifest entry 0 has an invalid size/],
    ['a name outside the pattern', [['manifest.json', entry({ name: '../../etc/passwd' })]], /manifest entry 0 has an invalid name/],
    ['a name that disagrees with its step', [['manifest.json', entry({ step: 7 })]], /is named step-0000000001 but records step 7/],
    ['a CID that does not parse', [['manifest.json', entry({ cid: 'not-a-cid' })]], /manifest entry 0 has an invalid cid/],
    ['a sha256 that is not hex', [['manifest.json', entry({ sha256: 'x'.repeat(64) })]], /manifest entry 0 has an invalid sha256/],
    ['a malformed signer', [['manifest.json', entry({ signer: 'me' })]], /manifest entry 0 has an invalid signer/],
    ['a manifest larger than the cap', [['manifest.json', ' '.repeat(CONTROL_OBJECT_MAX + 1)]], /larger than 4194304 bytes/],
    ['a latest pointer with a bad name', [['latest', JSON.stringify({ ...JSON.parse(latest), name: 'step-1; rm -rf' })]], /latest pointer has an invalid name/],
    ['a latest pointer with a bad CID', [['latest', JSON.stringify({ ...JSON.parse(latest), cid: 'bafy???' })]], /latest pointer has an invalid cid/],
    ['a latest pointer larger than the cap', [['latest', 'x'.repeat(CONTROL_OBJECT_MAX + 10)]], /larger than/],
    ['a sidecar larger than the cap', [[sidecarKey('step-0000000001'), `${manifest.checkpoints[0]!.cid}\n${' '.repeat(CONTROL_OBJECT_MAX)}`]], /larger than/],
    [
      'a sidecar with a bad sha256',
      [[sidecarKey('step-0000000001'), sidecar.replace(/"sha256":"[0-9a-f]+"/, '"sha256":"nothex"')]],
      /sidecar record is malformed/,
    ],
    [
      'a sidecar with a bad name',
      [[sidecarKey('step-0000000001'), sidecar.replace('"name":"step-0000000001"', '"name":"../x"')]],
      /sidecar record has an invalid name/,
    ],
  ]
  for (const [what, puts, message] of cases) {
    for (const [key, text] of puts) await client.put(key, text)
    const err = await store.load('latest').then(
      () => undefined,
      (e: unknown) => e,
    )
    t.type(err, O3IntegrityError, what)
    t.match((err as Error).message, message, what)
    t.notMatch((err as Error).message, /\n/, `${what}: one line`)
    await restore()
  }
  t.equal((await store.load('latest')).entry.name, 'step-0000000001', 'the restored objects load again')
})
