// Unmodified third-party loaders over the mount: Debian's torchvision reads the real
// Fashion-MNIST files and a small ImageFolder tree of real images, and every tensor equals what
// it loads from a local copy.
import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, mkdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { gunzipSync } from 'node:zlib'
import { mapLimit } from '../scripts/bench/util.js'
import { buildImageFolder, FASHION_MNIST } from './support/imagefolder.js'
import { createBucket, serverClient, useS3Server } from './support/s3-server.js'
import { freshStats, mount } from './support/o3mount.js'
import { putTree } from './support/manifest.js'

const BUCKET = `mount-loaders-${process.pid}`
const info = await useS3Server(t)
await createBucket(info, BUCKET)
const client = serverClient(info, BUCKET)
t.teardown(() => client.close())
const local = mkdtempSync(path.join(tmpdir(), 'o3mount-loaders-'))
t.teardown(() => rmSync(local, { recursive: true, force: true }))

/** Runs a Python snippet with Debian's interpreter (the one that sees python3-torchvision) and parses its JSON output. */
function python(code: string, args: string[]): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    execFile(
      '/usr/bin/python3',
      ['-c', code, ...args],
      { env: { ...process.env, OMP_NUM_THREADS: '1' }, maxBuffer: 1 << 24, timeout: 300_000 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`python failed: ${stderr || err.message}`))
        else resolve(JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>)
      },
    )
  })
}

const COMPARE_FASHION = `
import json, sys, torch
from torchvision import datasets, transforms
out = {}
for train in (True, False):
    a = datasets.FashionMNIST(root=sys.argv[1], train=train, download=False, transform=transforms.ToTensor())
    b = datasets.FashionMNIST(root=sys.argv[2], train=train, download=False, transform=transforms.ToTensor())
    same = torch.equal(a.data, b.data) and torch.equal(a.targets, b.targets)
    items = all(torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1] for i in range(0, len(a), 997))
    out['train' if train else 'test'] = {'n': len(a), 'same': bool(same), 'items': bool(items)}
print(json.dumps(out))
`

t.test('torchvision FashionMNIST over a --verify required mount equals a local copy', async (t) => {
  const raw = path.join(local, 'fashion', 'FashionMNIST', 'raw')
  mkdirSync(raw, { recursive: true })
  const names = ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte']
  // torchvision 0.14 looks for the unpacked idx files under <root>/FashionMNIST/raw.
  const files: Record<string, Buffer> = {}
  for (const name of names) {
    files[name] = gunzipSync(readFileSync(path.join(FASHION_MNIST, `${name}.gz`)))
    writeFileSync(path.join(raw, name), files[name])
  }
  // Uploaded as o3upload does, with the tree's manifest in FashionMNIST/raw, below the mount's root.
  await putTree(client, 'datasets/FashionMNIST/raw', files)
  const m = await mount(t, info, `${BUCKET}/datasets`, { args: ['--metadata-ttl', 'indefinite', '--verify', 'required'] })
  const r = await python(COMPARE_FASHION, [m.mountpoint, path.join(local, 'fashion')])
  t.same(r, { train: { n: 60000, same: true, items: true }, test: { n: 10000, same: true, items: true } })
  const s = await freshStats(m)
  t.ok(s.verify.blocksVerified >= 50, `every block served was verified (${s.verify.blocksVerified})`)
  t.equal(s.verify.failures, 0)
  await m.stop()
})

const COMPARE_IMAGEFOLDER = `
import json, sys, torch
from torchvision import datasets, transforms
a = datasets.ImageFolder(sys.argv[1], transform=transforms.ToTensor())
b = datasets.ImageFolder(sys.argv[2], transform=transforms.ToTensor())
loader = torch.utils.data.DataLoader(a, batch_size=8, num_workers=2)
batched = torch.cat([x for x, _ in loader])
same = a.classes == b.classes and [l for _, l in a.samples] == [l for _, l in b.samples]
tensors = all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
print(json.dumps({'n': len(a), 'classes': a.classes, 'same': same, 'tensors': tensors, 'loader': bool(torch.equal(batched, torch.stack([b[i][0] for i in range(len(b))])))}))
`

t.test('torchvision ImageFolder over the mount equals a local copy', async (t) => {
  const root = path.join(local, 'images')
  const tree = buildImageFolder(root, { perClass: 6 })
  await mapLimit(tree.files, 8, async (f) => client.put(`images/${path.relative(root, f.path)}`, readFileSync(f.path)))
  const m = await mount(t, info, `${BUCKET}/images`)
  const r = await python(COMPARE_IMAGEFOLDER, [m.mountpoint, root])
  t.same(r, { n: tree.files.length, classes: tree.classes, same: true, tensors: true, loader: true })
  await m.stop()
})
