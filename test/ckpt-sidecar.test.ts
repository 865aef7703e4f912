import t from 'tap'
import { O3IntegrityError } from '../lib/o3/index.js'
import { signerFromHex } from '../lib/content/signer.js'
import { CheckpointStore, CheckpointWriter, TrustPolicy, sidecarKey, type ManifestEntry } from '../checkpoint/index.js'
import { signedMessage, type CheckpointRecord } from '../checkpoint/records.js'
import { createBucket, useS3Server } from './support/s3-server.js'
import { openClient, syntheticState, tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20
const KEY = '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80'
const ADDRESS = '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266'
const OTHER = signerFromHex('59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d', 'test key')

const info = await useS3Server(t)
const bucket = `ckpt-sidecar-${process.pid}`
await createBucket(info, bucket)

async function sidecarText(store: CheckpointStore, name: string): Promise<string> {
  return (await store.client.getBytes(sidecarKey(name), 0, 1 << 20)).toString('utf8')
}

/** Rewrites a stored sidecar through `edit`, keeping its format. */
async function tamper(
  store: CheckpointStore,
  entry: ManifestEntry,
  edit: (r: CheckpointRecord, firstLine: string) => [CheckpointRecord, string],
): Promise<void> {
  const text = await sidecarText(store, entry.name)
  const nl = text.indexOf('\n')
  const [record, first] = edit(JSON.parse(text.slice(nl + 1)) as CheckpointRecord, text.slice(0, nl))
  await store.client.put(sidecarKey(entry.name), `${first}\n${JSON.stringify(record, null, 2)}\n`)
}

t.test('a signed save: AKAVE_PRIVATE_KEY signs, the address is recovered on read', async (t) => {
  const client = openClient(t, info, `${bucket}/signed`)
  const saved = process.env.AKAVE_PRIVATE_KEY
  process.env.AKAVE_PRIVATE_KEY = KEY
  t.teardown(() => {
    if (saved === undefined) delete process.env.AKAVE_PRIVATE_KEY
    else process.env.AKAVE_PRIVATE_KEY = saved
  })
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2 })
  const { entry, record } = await writer.save(syntheticState([MiB]), { step: 1, epoch: 0, model: 'm' })
  t.equal(record.signer, ADDRESS)
  t.equal(entry.signer, ADDRESS)
  t.match(record.signature, /^0x[0-9a-f]{130}$/)
  const text = await sidecarText(new CheckpointStore(client), entry.name)
  t.equal(text.split('\n')[0], record.cid, 'cat gives the CID on the first line')
  const store = new CheckpointStore(client)
  t.same(await store.readRecord(entry, { trust: TrustPolicy.fromFlags([ADDRESS.toLowerCase()], {}) }), record)
  const v = await store.verify(entry)
  t.ok(v.ok && v.signer === ADDRESS)
  await t.rejects(store.readRecord(entry, { trust: TrustPolicy.fromFlags([OTHER.address], {}) }), O3IntegrityError, 'a different required signer is refused')
})

t.test('tampered sidecars and bad signatures are reported', async (t) => {
  const client = openClient(t, info, `${bucket}/tamper`)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: signerFromHex(KEY, 'test') })
  const store = new CheckpointStore(client)
  const good = (await writer.save(syntheticState([MiB]), { step: 1, epoch: 0, model: 'm' })).entry
  const cases: [string, (r: CheckpointRecord, first: string) => [CheckpointRecord, string], RegExp][] = [
    ['a field only the signature covers', (r, f) => [{ ...r, model: 'other-model' }, f], /bad signature/],
    ['a signature by another key', (r, f) => [{ ...r, signature: OTHER.sign(signedMessage(r)) }, f], /bad signature/],
    [
      'a re-signed record claiming another signer',
      (r, f) => {
        const forged = { ...r, signer: OTHER.address }
        return [{ ...forged, signature: OTHER.sign(signedMessage(forged)) }, f]
      },
      /disagrees with the manifest/,
    ],
    ['a garbled signature', (r, f) => [{ ...r, signature: '0x1234' }, f], /bad signature/],
    ['the sha256', (r, f) => [{ ...r, sha256: '0'.repeat(64) }, f], /disagrees with the manifest/],
    ['the CID line', (r) => [r, 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'], /first line/],
    ['the signature removed', (r, f) => [{ ...r, signature: undefined }, f], /bad signature/],
  ]
  const original = await sidecarText(store, good.name)
  for (const [what, edit, message] of cases) {
    await tamper(store, good, edit)
    await t.rejects(store.readRecord(good), { constructor: O3IntegrityError, message }, what)
    const v = await store.verify(good)
    t.equal(v.ok, false, `verify reports ${what}`)
    await store.client.put(sidecarKey(good.name), original)
  }
  t.ok((await store.verify(good)).ok, 'the restored sidecar verifies again')
})

t.test('an unsigned checkpoint is refused only when a signer is required', async (t) => {
  const client = openClient(t, info, `${bucket}/unsigned`)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null })
  const { entry, record } = await writer.save(syntheticState([MiB]), { step: 1, epoch: 0, model: 'm' })
  t.equal(record.signer, undefined)
  const store = new CheckpointStore(client)
  t.ok(await store.readRecord(entry))
  await t.rejects(store.readRecord(entry, { trust: TrustPolicy.fromFlags([ADDRESS], {}) }), /unsigned, but the trusted signer is 0xf39F/)
})
