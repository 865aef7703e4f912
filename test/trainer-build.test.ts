// Both builds of the addon from the one source list: cmake-js (build/, what everything else
// loads) and node-gyp (build-gyp/). Each trains the same few steps in a fresh process; their
// states must be identical. The node-gyp build compiles from scratch on a fresh checkout
// (about two minutes on two cores).
import { spawn } from 'node:child_process'
import { statSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'

const root = path.resolve(import.meta.dirname, '..')
const buildAddon = path.join(root, 'scripts/build-addon')
const indexTs = path.join(root, 'addon/index.ts')

function run(command: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: root, env: { ...process.env, ...env } })
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.stderr.on('data', (d) => (out += d))
    child.on('close', (code) => resolve({ code, out }))
  })
}

// Trains an MLP a few steps with the addon at `addon` and prints a digest of its whole state.
const TRAIN = `
import { createHash } from 'node:crypto'
import { Trainer } from ${JSON.stringify(indexTs)}
const tr = await Trainer.create({ model: 'mlp', seed: 4, threads: 2, optimizer: { type: 'sgd', lr: 0.1, momentum: 0.9 },
  data: { kind: 'mnist', root: '/usr/share/datasets/fashion-mnist', split: 'test' }, batchSize: 50 })
await tr.trainSteps(5)
const hash = createHash('sha256')
for (const s of await tr.stateDict()) hash.update(s.name).update(s.data)
console.log(JSON.stringify({ device: tr.device.type, entries: (await tr.stateDict()).length, digest: hash.digest('hex') }))
tr.close()
`

async function trainWith(addon: string): Promise<{ device: string; entries: number; digest: string }> {
  const r = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', TRAIN], { O3_TRAINER_ADDON: addon })
  if (r.code !== 0) throw new Error(`training with ${addon} failed:\n${r.out}`)
  return JSON.parse(r.out.trim().split('\n').at(-1)!)
}

t.test('cmake-js build is up to date, and --if-stale does not rebuild it', async (t) => {
  const addon = path.join(root, 'build/Release/o3_trainer.node')
  const first = await run(buildAddon, ['--if-stale'])
  t.equal(first.code, 0, first.out)
  const built = statSync(addon).mtimeMs
  const second = await run(buildAddon, ['--if-stale'])
  t.equal(second.code, 0, second.out)
  t.equal(statSync(addon).mtimeMs, built, 'unchanged sources: no rebuild')
})

t.test('node-gyp builds the same addon', async (t) => {
  const gyp = await run(buildAddon, ['--gyp', '--if-stale'])
  t.equal(gyp.code, 0, gyp.out)
  const viaGyp = await trainWith(path.join(root, 'build-gyp/build/Release/o3_trainer.node'))
  const viaCmake = await trainWith(path.join(root, 'build/Release/o3_trainer.node'))
  t.equal(viaGyp.device, 'cpu')
  t.ok(viaGyp.entries > 10, `${viaGyp.entries} state entries`)
  t.same(viaGyp, viaCmake, 'both builds train to the same state')
})
