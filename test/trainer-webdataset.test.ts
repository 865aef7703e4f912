// WebDataset tar shards in the native trainer: the same image gives the same tensor from an idx
// file, an ImageFolder PNG and a shard member; shards written by our writer, Python's tarfile and
// GNU tar read alike; training from shards on a real mount; exact resume; corrupt shards named.
import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { gunzipSync, gzipSync } from 'node:zlib'
import t from 'tap'
import { cliCommand } from '../lib/paths.js'
import { Trainer, type DataSpec, type StateTensor, type TrainerOptions } from '../addon/index.js'
import { parseTrainArgs } from '../trainer/options.js'
import { train } from '../trainer/run.js'
import { directorySink, writeShards } from '../upload/webdataset.js'
import { FASHION_MNIST, writeGrayPngTree } from './support/imagefolder.js'
import { mount } from './support/o3mount.js'
import { serverEnv, useS3Server } from './support/s3-server.js'

const work = mkdtempSync(path.join(tmpdir(), 'o3-webdataset-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))

const COUNT = 120
// The first COUNT test images as grayscale PNGs (PIL), one directory per label ("0".."9", so the
// directory order is the label order), and the same images as idx files in the ImageFolder order.
const tree = writeGrayPngTree(path.join(work, 'tree'), 't10k', COUNT)

/** (class, source index) of every tree file in the ImageFolder order: classes, then paths. */
const ordered = readdirSync(tree)
  .sort()
  .flatMap((c) =>
    readdirSync(path.join(tree, c))
      .sort()
      .map((f) => ({ label: Number(c), index: Number(f.slice(0, 5)) })),
  )
const idxDir = path.join(work, 'idx')
mkdirSync(idxDir)
{
  const images = gunzipSync(readFileSync(path.join(FASHION_MNIST, 't10k-images-idx3-ubyte.gz')))
  const head = Buffer.from(images.subarray(0, 16))
  head.writeUInt32BE(COUNT, 4)
  const body = ordered.map((o) => images.subarray(16 + o.index * 784, 16 + (o.index + 1) * 784))
  writeFileSync(path.join(idxDir, 't10k-images-idx3-ubyte.gz'), gzipSync(Buffer.concat([head, ...body])))
  const labels = Buffer.alloc(8 + COUNT)
  labels.writeUInt32BE(0x801, 0)
  labels.writeUInt32BE(COUNT, 4)
  ordered.forEach((o, i) => (labels[8 + i] = o.label))
  writeFileSync(path.join(idxDir, 't10k-labels-idx1-ubyte.gz'), gzipSync(labels))
}

// In tree order (no shuffle), in shards of about 12 KiB: several shards of uneven sizes.
const ours = path.join(work, 'ours')
const written = await writeShards(tree, directorySink(ours), { shardSize: 12 << 10, shuffle: false })

const gray = (root: string, extra: Partial<DataSpec> = {}): DataSpec => ({ kind: 'webdataset', root, imageSize: 28, channels: 1, ...extra }) as DataSpec

const options = (data: DataSpec, over: Partial<TrainerOptions> = {}): TrainerOptions => ({
  model: 'mlp',
  seed: 5,
  threads: 2,
  device: 'cpu',
  optimizer: { type: 'sgd', lr: 0.05, momentum: 0.9 },
  data,
  batchSize: 16,
  ...over,
})

t.test('the writer cuts shards by size and keeps every sample once', async (t) => {
  t.ok(written.shards.length >= 3, `${written.shards.length} shards`)
  for (const s of written.shards) t.ok(s.bytes <= 12 << 10, `${s.name}: ${s.bytes} bytes`)
  t.equal(
    written.shards.reduce((n, s) => n + s.samples, 0),
    COUNT,
  )
  t.same(
    written.samples.map((s) => s.label),
    ordered.map((o) => o.label),
  )
  const shuffled = await writeShards(tree, directorySink(path.join(work, 'shuffled')), { shardSize: 12 << 10 })
  t.not(shuffled.samples.map((s) => s.source).join(), written.samples.map((s) => s.source).join(), 'shuffled by default')
  t.same(shuffled.samples.map((s) => s.source).sort(), written.samples.map((s) => s.source).sort())
})

t.test('one image, one tensor: idx, ImageFolder PNG and shard PNG score identically', async (t) => {
  const tr = await Trainer.create(options({ kind: 'mnist', root: idxDir, split: 'test' }))
  t.teardown(() => tr.close())
  await tr.trainSteps(10)
  const forms: DataSpec[] = [{ kind: 'mnist', root: idxDir, split: 'test' }, { kind: 'imagefolder', root: tree, imageSize: 28, channels: 1 }, gray(ours)]
  const results = []
  for (const d of forms) results.push(await tr.evaluate(d, 7))
  t.ok(results[0]!.accuracy > 0.2 && results[0]!.accuracy < 1, `a model that is neither blind nor perfect: ${results[0]!.accuracy}`)
  t.same(results[1], results[0], 'ImageFolder PNG = idx')
  t.same(results[2], results[0], 'shard PNG = idx')
  const info = await Trainer.create(options(gray(ours)))
  t.same(info.dataset, {
    size: COUNT,
    epochSize: COUNT,
    classes: 10,
    shape: [1, 28, 28],
    stepsPerEpoch: Math.ceil(COUNT / 16),
    globalBatch: 16,
    classNames: [],
    normalize: { mul: 2 / 255, sub: 1 },
  })
  info.close()
})

t.test("shards from Python's tarfile (pax, GNU) and GNU tar read like ours", async (t) => {
  const stage = path.join(work, 'stage')
  mkdirSync(stage)
  for (const s of written.samples) {
    writeFileSync(path.join(stage, `${s.key}.png`), readFileSync(path.join(tree, s.source)))
    writeFileSync(path.join(stage, `${s.key}.cls`), `${s.label}\n`)
  }
  const dirs: Record<string, string> = {}
  for (const fmt of ['PAX', 'GNU']) {
    dirs[fmt] = path.join(work, `py-${fmt}`)
    mkdirSync(dirs[fmt])
    // Members under a 120-character directory: a pax path record or a GNU long name, beyond ustar.
    execFileSync('/usr/bin/python3', [
      '-c',
      `
import os, sys, tarfile
stage, out, fmt = sys.argv[1], sys.argv[2], getattr(tarfile, sys.argv[3] + '_FORMAT')
names = sorted(os.listdir(stage))
for s in range(2):
    with tarfile.open(os.path.join(out, f'part-{s}.tar'), 'w', format=fmt) as t:
        for n in names[s * len(names) // 2:(s + 1) * len(names) // 2]:
            t.add(os.path.join(stage, n), arcname='d' * 120 + '/' + n)
`,
      stage,
      dirs[fmt],
      fmt,
    ])
  }
  dirs.gnutar = path.join(work, 'gnutar')
  mkdirSync(dirs.gnutar)
  execFileSync('tar', ['--sort=name', '-C', stage, '-cf', path.join(dirs.gnutar, 'all.tar'), '.'])
  const tr = await Trainer.create(options(gray(ours)))
  t.teardown(() => tr.close())
  await tr.trainSteps(5)
  const want = await tr.evaluate(gray(ours), 8)
  for (const [name, dir] of Object.entries(dirs)) t.same(await tr.evaluate(gray(dir), 8), want, name)
  t.same(await tr.evaluate(gray(dirs.PAX!, { shards: 'part-{0..1}.tar' } as Partial<DataSpec>), 8), want, 'a brace pattern names the shards')
})

t.test('o3train: --dataset webdataset, --shards and --channels reach the loader', async (t) => {
  const args = ['--data', ours, '--dataset', 'webdataset', '--image-size', '28', '--model', 'mlp', '--device', 'cpu', '--batch', '8', '--threads', '2']
  const o = parseTrainArgs([...args, '--shards', 'shard-{000000..000003}.tar', '--channels', '1'])
  const s = await train(o, ours)
  t.equal(
    s.samples,
    written.shards.slice(0, 4).reduce((n, x) => n + x.samples, 0),
    'one epoch over the four shards named',
  )
  t.equal(s.epochsCompleted, 1)
  t.equal(parseTrainArgs([...args, '--shuffle-window', '50']).shuffleWindow, 50)
  t.throws(() => parseTrainArgs([...args, '--channels', '2']), /--channels must be 1 or 3/)
  t.throws(() => parseTrainArgs(['--data', ours, '--shards', 'a.tar']), /--shards applies to --dataset webdataset only/)
})

const stateBytes = (s: StateTensor[]) => Object.fromEntries(s.map((x) => [x.name, x.data.toString('base64')]))

t.test('a resumed run ends bit-identical to an uninterrupted one', async (t) => {
  // A small window and several shards: the shard order and the window shuffle both matter.
  const spec = gray(ours)
  const over = { shuffleWindow: 5, batchSize: 16 }
  const straight = await Trainer.create(options(spec, over))
  t.teardown(() => straight.close())
  await straight.trainSteps(20) // crosses two epoch ends (8 steps per epoch)
  const first = await Trainer.create(options(spec, over))
  await first.trainSteps(11)
  const saved = await first.stateDict()
  first.close()
  const resumed = await Trainer.create(options(spec, over))
  t.teardown(() => resumed.close())
  await resumed.loadStateDict(saved)
  t.same(resumed.position, { epoch: 1, index: 48 })
  await resumed.trainSteps(9)
  t.same(stateBytes(await resumed.stateDict()), stateBytes(await straight.stateDict()))
})

t.test('ranks split the shards: rank r takes every world-size-th shard', async (t) => {
  const sizes = []
  for (let rank = 0; rank < 3; rank++) {
    const tr = await Trainer.create(options(gray(ours), { rank, worldSize: 3 }))
    sizes.push(tr.dataset.epochSize)
    tr.close()
  }
  const perShard = written.shards.map((s) => s.samples)
  t.same(
    sizes,
    [0, 1, 2].map((r) => perShard.filter((_, i) => i % 3 === r).reduce((a, b) => a + b, 0)),
  )
  await t.rejects(
    Trainer.create(options(gray(ours), { rank: 0, worldSize: written.shards.length + 1 })),
    /shards for \d+ ranks: write at least one shard per rank/,
  )
})

t.test('truncated and corrupt shards name the shard and the offset', async (t) => {
  const one = path.join(ours, written.shards[0]!.name)
  const bytes = readFileSync(one)
  const second = 512 + Math.ceil(parseInt(bytes.toString('ascii', 124, 135), 8) / 512) * 512 // the .cls member's header
  const cases: [string, Buffer, RegExp][] = [
    ['cut-mid-member', bytes.subarray(0, 612), /truncated tar: the file ends at offset 612 inside a member's data/],
    ['cut-at-boundary', bytes.subarray(0, second + 1024), new RegExp(`ends at offset ${second + 1024} without the end-of-archive marker`)],
    [
      'bad-checksum',
      Buffer.concat([bytes.subarray(0, second + 20), Buffer.from('Z'), bytes.subarray(second + 21)]),
      new RegExp(`tar header at offset ${second} is corrupt \\(checksum mismatch\\)`),
    ],
    [
      'bad-label',
      Buffer.concat([bytes.subarray(0, second + 512), Buffer.from('x'), bytes.subarray(second + 513)]),
      new RegExp(`member 0+\\.cls at offset ${second}: the class index must be a non-negative integer, not 'x'`),
    ],
  ]
  for (const [name, b, why] of cases) {
    const dir = path.join(work, `bad-${name}`)
    mkdirSync(dir)
    writeFileSync(path.join(dir, 'shard-000000.tar'), b)
    const err = await Trainer.create(options(gray(dir))).then(
      () => new Error('opened'),
      (e: Error) => e,
    )
    t.match(err.message, path.join(dir, 'shard-000000.tar'), `${name}: names the shard`)
    t.match(err.message, why, `${name}: ${err.message}`)
  }
  const missing = await Trainer.create(options(gray(ours, { shards: 'shard-{000000..000999}.tar' } as Partial<DataSpec>))).then(
    () => new Error('opened'),
    (e: Error) => e,
  )
  t.match(missing.message, /shard-0000\d\d\.tar: cannot open: No such file or directory/)
  // A shard cut short after the trainer opened it: the read that finds out names the shard.
  const late = path.join(work, 'late')
  mkdirSync(late)
  writeFileSync(path.join(late, 'shard-000000.tar'), bytes)
  const tr = await Trainer.create(options(gray(late), { batchSize: 64, shuffle: false }))
  truncateSync(path.join(late, 'shard-000000.tar'), 1024)
  const err = await tr.trainSteps(1).then(
    () => new Error('trained'),
    (e: Error) => e,
  )
  t.match(err.message, /shard-000000\.tar: truncated tar: the file ends at offset \d+ inside 0000\d\d\.png/)
  tr.close()
})

/** Runs the o3upload CLI as a user would. */
function o3upload(args: string[], env: Record<string, string>): { code: number; stdout: string; stderr: string } {
  const cli = cliCommand('upload/cli.ts')
  try {
    return {
      code: 0,
      stdout: execFileSync(process.execPath, [...cli.execArgv, cli.file, ...args], {
        env: { ...process.env, ...env },
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
      stderr: '',
    }
  } catch (err) {
    const e = err as { status: number; stdout: string; stderr: string }
    return { code: e.status, stdout: e.stdout, stderr: e.stderr }
  }
}

t.test('o3upload --webdataset: shards to O3, trained on through a real mount, read by Python tarfile', async (t) => {
  const info = await useS3Server(t)
  const bucket = `webdataset-${process.pid}`
  const env = serverEnv(info)
  const local = path.join(work, 'cli-shards')
  const args = ['--webdataset', '--shard-size', '16K', tree]
  const wrote = o3upload([...args, local], env)
  t.equal(wrote.code, 0, wrote.stderr)
  t.match(wrote.stdout, /"event":"shards".*"samples":120/)
  const up = o3upload([...args, `o3://${bucket}/shards`, '--create-bucket'], env)
  t.equal(up.code, 0, up.stderr)
  const names = readdirSync(local).sort()
  t.ok(names.length >= 3, `${names.length} shards`)
  const bad = o3upload(['--webdataset', '--shard-size', 'lots', tree, local], env)
  t.equal(bad.code, 64, `a bad --shard-size is a usage error: ${bad.stderr}`)
  const empty = o3upload(['--webdataset', work + '/idx', local], env)
  t.equal(empty.code, 64, `a directory without class folders of images is a usage error: ${empty.stderr}`)

  const m = await mount(t, info, `${bucket}/shards`)
  const remote = readdirSync(m.mountpoint)
  t.same(remote.filter((n) => n.endsWith('.tar')).sort(), names, 'the same shards')
  t.ok(
    names.every((n) => remote.includes(`${n}.cid`)),
    'each with a .cid sidecar',
  )
  const fromLocal = await Trainer.create(options(gray(local)))
  t.teardown(() => fromLocal.close())
  const mounted = await Trainer.create(options(gray(m.mountpoint)))
  t.teardown(() => mounted.close())
  const [a, b] = [await fromLocal.trainSteps(10), await mounted.trainSteps(10)]
  t.equal(b.loss, a.loss, 'the same losses as from local shards')
  t.same(stateBytes(await mounted.stateDict()), stateBytes(await fromLocal.stateDict()), 'and the same weights')
  mounted.close()
  const list = (file: string) =>
    execFileSync(
      '/usr/bin/python3',
      [
        '-c',
        `
import hashlib, json, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    print(json.dumps([[m.name, hashlib.sha256(t.extractfile(m).read()).hexdigest()] for m in t.getmembers()]))
`,
        file,
      ],
      { encoding: 'utf8' },
    )
  const members = JSON.parse(list(path.join(m.mountpoint, names[1]!))) as [string, string][]
  t.ok(members.length >= 2 && members.every(([n]) => /^\d{6}\.(png|cls)$/.test(n)), `${members.length} members named <key>.png|cls`)
  t.same(members, JSON.parse(list(path.join(local, names[1]!))), 'tarfile reads the same members through the mount')
  await m.stop()
})
