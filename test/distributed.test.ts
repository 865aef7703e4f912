// Data parallel on CPU through Gloo: two ranks of batch 32 against one process of batch 64, and
// two 2-rank runs against each other. Ranks are plain processes given torchrun's variables.
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { freePort } from './support/free-port.js'

const work = mkdtempSync(join(tmpdir(), 'o3-dist-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))

interface Run {
  world: { rank: number; worldSize: number; collectives: boolean }
  result: { steps: number; samples: number; commSeconds: number }
  test: { samples: number; accuracy: number }
  globalBatch: number
  weights: Record<string, string>
}

/** Runs one worker process; killed (and failing) after five minutes, a deadline for a hung rank on a loaded machine. */
function worker(name: string, batch: number, steps: number, env: Record<string, string> = {}, timeoutSeconds = 60): Promise<Run> {
  const out = join(work, `${name}.json`)
  const base = { ...process.env }
  for (const k of ['WORLD_SIZE', 'RANK', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT']) delete base[k]
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      ['--no-warnings', '--import', 'tsx', 'test/support/dist-worker.ts', out, String(batch), String(steps), String(timeoutSeconds)],
      { env: { ...base, ...env }, timeout: 300_000, killSignal: 'SIGKILL' },
      (err, _stdout, stderr) =>
        err
          ? reject(Object.assign(new Error(`${name}: ${err.message} ${stderr}`), { killed: err.killed }))
          : resolve(JSON.parse(readFileSync(out, 'utf8')) as Run),
    )
  })
}

async function job(name: string, batch: number, steps: number): Promise<Run[]> {
  const port = String(await freePort())
  const rank = (r: number) =>
    worker(`${name}-${r}`, batch, steps, { WORLD_SIZE: '2', RANK: String(r), LOCAL_RANK: String(r), MASTER_ADDR: '127.0.0.1', MASTER_PORT: port })
  return Promise.all([rank(0), rank(1)])
}

const floats = (b64: string) => new Float32Array(new Uint8Array(Buffer.from(b64, 'base64')).buffer)

t.test('2 ranks x 32 train the same weights as 1 x 64, bit for bit on a rerun', async (t) => {
  const [a0, a1] = await job('a', 32, 200)
  t.same(
    [a0.world, a1.world].map((w) => [w.rank, w.worldSize, w.collectives]),
    [
      [0, 2, true],
      [1, 2, true],
    ],
  )
  t.equal(a0.globalBatch, 64)
  t.equal(a0.result.samples, 200 * 32, 'each rank trained its half of every global batch')
  t.ok(a0.result.commSeconds > 0, 'time in all-reduce is reported')
  t.same(a1.weights, a0.weights, 'the ranks hold identical weights')
  t.equal(a0.test.samples, 10000, 'evaluation counts are summed over the ranks')
  t.equal(a0.test.accuracy, a1.test.accuracy)

  const [b0] = await job('b', 32, 200)
  t.same(b0.weights, a0.weights, 'a second 2-rank run is bit-identical')

  const single = await worker('single', 64, 200)
  t.equal(single.world.collectives, false)
  let worst = 0
  for (const [name, data] of Object.entries(single.weights)) {
    const x = floats(data),
      y = floats(a0.weights[name])
    t.equal(x.length, y.length, name)
    for (let i = 0; i < x.length; i++) worst = Math.max(worst, Math.abs(x[i] - y[i]))
  }
  t.ok(worst < 1e-4, `largest weight difference from 1 x 64 is ${worst}`)
  t.ok(Math.abs(single.test.accuracy - a0.test.accuracy) < 0.005, `test accuracy ${single.test.accuracy} vs ${a0.test.accuracy}`)
})

t.test('a rank whose peer never joins fails within the timeout', async (t) => {
  const port = String(await freePort())
  const started = Date.now()
  const err = await worker('alone', 32, 10, { WORLD_SIZE: '2', RANK: '1', LOCAL_RANK: '0', MASTER_ADDR: '127.0.0.1', MASTER_PORT: port }, 5).then(
    () => undefined,
    (e: Error & { killed?: boolean }) => e,
  )
  t.match(err?.message, /failed/, 'the rank failed')
  t.equal(err?.killed, false, `it gave up by itself after ${Date.now() - started} ms, not when the test killed it`)
})
