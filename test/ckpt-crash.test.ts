import t from 'tap'
import { CheckpointStore, CheckpointWriter, dataKey, sidecarKey, type CommitStep } from '../checkpoint/index.js'
import { createBucket, useS3Server } from './support/s3-server.js'
import { openClient, runSaveChild, syntheticState, tempDir } from './fixtures/ckpt.js'

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
    t.same(objects.sort(), names.flatMap((n) => [dataKey(n), sidecarKey(n)]).sort(), 'only committed checkpoints remain')
    if (crashAt !== 'latest') {
      await writer.save(syntheticState([MiB]), { step: 200, epoch: 0, model: 'm' })
      t.equal((await store.readLatest())?.name, 'step-0000000200', 'the interrupted step can be saved again')
    }
  })
}
