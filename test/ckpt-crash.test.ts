import t from 'tap'
import { CheckpointStore, CheckpointWriter, dataKey, sidecarKey, type CommitStep, type Manifest } from '../checkpoint/index.js'
import { createBucket, useS3Server } from './support/s3-server.js'
import { readAll } from './support/objects.js'
import { capture, openClient, runSaveChild, syntheticState, tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20
const info = await useS3Server(t)
const bucket = `ckpt-crash-${process.pid}`
await createBucket(info, bucket)

const STEPS: CommitStep[] = ['part', 'data', 'sidecar', 'manifest', 'latest']

for (const crashAt of STEPS) {
  t.test(`killed right after "${crashAt}": latest stays on a complete checkpoint, the next writer cleans up`, async (t) => {
    const location = `${bucket}/after-${crashAt}`
    const localDir = tempDir(t)
    const client = openClient(t, info, location)
    const first = await (
      await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, parallel: 2, signer: null })
    ).save(syntheticState([2 * MiB]), { step: 100, epoch: 0, model: 'm' })

    const out = await runSaveChild(info, { location, localDir, step: 200, tensorsKiB: [12 << 10], partSize: 5 * MiB, parallel: 2, crashAt })
    t.equal(out.signal, 'SIGKILL', 'the child died at the injected point')

    const committed = crashAt === 'latest' ? 'step-0000000200' : 'step-0000000100'
    const store = new CheckpointStore(client)
    t.equal((await store.readLatest())?.name, committed, `latest names ${committed}`)
    const resumed = await store.resume()
    t.equal(resumed?.entry.name, committed, 'resume verifies and loads it')
    if (crashAt !== 'latest') t.equal(resumed?.entry.cid, first.record.cid)

    if (crashAt === 'part') {
      const pending: string[] = []
      for await (const u of client.listMultipartUploads('')) pending.push(u.key)
      t.same(pending, [dataKey('step-0000000200')], 'the killed save left its multipart upload behind')
    }
    const writer = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, parallel: 2, signer: null })
    const left: string[] = []
    for await (const u of client.listMultipartUploads('')) left.push(u.key)
    t.same(left, [], 'no multipart upload survives the next open')
    const objects: string[] = []
    for await (const o of client.list('checkpoints/')) if (o.type === 'object') objects.push(o.key)
    const names = writer.checkpoints.map((e) => e.name)
    // A save killed after its manifest entry is complete: the next writer keeps what the manifest names.
    t.same(
      names,
      crashAt === 'manifest' || crashAt === 'latest' ? ['step-0000000100', 'step-0000000200'] : ['step-0000000100'],
      'the manifest keeps its checkpoints',
    )
    t.same(objects.sort(), names.flatMap((n) => [dataKey(n), sidecarKey(n)]).sort(), "only the manifest's checkpoints remain")
    if (crashAt !== 'latest') {
      await writer.save(syntheticState([MiB]), { step: 200, epoch: 0, model: 'm' })
      t.equal((await store.readLatest())?.name, 'step-0000000200', 'the interrupted step can be saved again')
    }
  })
}

t.test('a missing or malformed latest: the next writer deletes nothing and resume takes the newest verified checkpoint', async (t) => {
  const client = openClient(t, info, `${bucket}/latest-lost`)
  const localDir = tempDir(t)
  const first = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, signer: null })
  const saved = [
    await first.save(syntheticState([MiB]), { step: 100, epoch: 0, model: 'm' }),
    await first.save(syntheticState([MiB]), { step: 200, epoch: 0, model: 'm' }),
  ]
  const manifest = (await readAll(client, 'manifest.json')).toString('utf8')
  const everything = async () => {
    const out: string[] = []
    for await (const o of client.list('')) if (o.type === 'object' && o.key !== 'latest') out.push(o.key)
    return out.sort()
  }
  const before = await everything()
  for (const [what, latest] of [
    ['deleted', undefined],
    ['malformed', '{"version":1,"name":'],
    ['naming a checkpoint the manifest lacks', JSON.stringify({ version: 1, name: 'step-0000000300', cid: saved[0]!.record.cid, seq: 3, time: 'x' })],
  ] as const) {
    if (latest === undefined) await client.delete('latest')
    else await client.put('latest', latest)
    // What o3train --resume auto does: open the run's writer, then resume through its store.
    const { logger, warnings } = capture()
    const writer = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, signer: null, logger })
    t.same(
      writer.checkpoints.map((e) => e.name),
      ['step-0000000100', 'step-0000000200'],
      `latest ${what}: the writer keeps both checkpoints`,
    )
    t.equal((await readAll(client, 'manifest.json')).toString('utf8'), manifest, `latest ${what}: manifest.json untouched`)
    t.same(await everything(), before, `latest ${what}: no object deleted`)
    const resumed = await writer.store.resume()
    t.equal(resumed?.entry.name, 'step-0000000200', `latest ${what}: resumes from the newest checkpoint`)
    t.equal(resumed?.entry.cid, saved[1]!.record.cid)
    t.ok(
      warnings().some((w) => /latest/.test(w.msg) && /newest/.test(w.msg)),
      `latest ${what}: says so: ${JSON.stringify(warnings())}`,
    )
  }
  // The newest that verifies: with step 200's bytes replaced, resume falls back to step 100.
  await client.delete('latest')
  await client.put(dataKey('step-0000000200'), Buffer.alloc(saved[1]!.record.size, 7))
  const writer = await CheckpointWriter.open(client, { localDir, partSize: 5 * MiB, signer: null })
  t.equal((await writer.store.resume())?.entry.name, 'step-0000000100', 'a checkpoint that fails verification is skipped')
  t.same(
    (JSON.parse((await readAll(client, 'manifest.json')).toString('utf8')) as Manifest).checkpoints.map((e) => e.name),
    ['step-0000000100', 'step-0000000200'],
    'and still not deleted',
  )
})
