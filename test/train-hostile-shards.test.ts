// o3train on hostile WebDataset shards written by Python's tarfile: sizes no file can hold (pax
// `size` records and GNU base-256 fields near INT64_MAX, on directories and on members), gigabytes
// declared in a few KiB, and members that a sparse file can hold but no label or image needs.
// Each must end with o3train's one-line data error naming the shard and the offset (exit 91):
// no signal, no bad_alloc, and no gigabytes allocated on the way.
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { cliCommand } from '../lib/paths.js'

const work = mkdtempSync(path.join(tmpdir(), 'o3-hostile-shards-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))

// Writes shard-000000.tar into each case's directory with tarfile: a valid first sample (a real
// PNG from Pillow and its label), then the hostile entry, then another valid sample.
const WRITE = `
import io, os, sys, tarfile
from PIL import Image
out = sys.argv[1]
png = io.BytesIO(); Image.new('L', (28, 28), 128).save(png, 'PNG'); png = png.getvalue()
GIB, MAX = 1 << 30, (1 << 63) - 1

def member(t, name, data):
    ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))

def sample(t, key, label=b'3\\n'):
    member(t, key + '.png', png); member(t, key + '.cls', label)

def shard(case, fmt, hostile):
    d = os.path.join(out, case); os.makedirs(d)
    with tarfile.open(os.path.join(d, 'shard-000000.tar'), 'w', format=fmt) as t:
        sample(t, '000000'); hostile(t); sample(t, '000002')

def header_only(t, name, size, kind=tarfile.REGTYPE, pax=None):
    ti = tarfile.TarInfo(name); ti.type = kind; ti.size = size
    if pax: ti.pax_headers = pax
    t.addfile(ti)

shard('pax-dir', tarfile.PAX_FORMAT, lambda t: header_only(t, 'dir', 0, tarfile.DIRTYPE, {'size': str(MAX)}))
shard('gnu-dir', tarfile.GNU_FORMAT, lambda t: header_only(t, 'dir', MAX, tarfile.DIRTYPE))
shard('pax-member', tarfile.PAX_FORMAT, lambda t: header_only(t, '000001.cls', 0, pax={'size': str(MAX)}))
shard('gnu-member', tarfile.GNU_FORMAT, lambda t: header_only(t, '000001.png', MAX - 511))
shard('4gib-label', tarfile.USTAR_FORMAT, lambda t: header_only(t, '000001.cls', 4 * GIB))
shard('60gib-label', tarfile.GNU_FORMAT, lambda t: header_only(t, '000001.cls', 60 * GIB))

# A sparse file that does hold the declared member: only a per-member cap stops its allocation.
def sparse(case, name, size):
    d = os.path.join(out, case); os.makedirs(d)
    head, tail = io.BytesIO(), io.BytesIO()
    t = tarfile.open(fileobj=head, mode='w', format=tarfile.PAX_FORMAT)
    sample(t, '000000')
    end = t.offset  # before the end-of-archive marker
    t.close()
    with tarfile.open(fileobj=tail, mode='w', format=tarfile.PAX_FORMAT) as t:
        if name.endswith('.png'): member(t, '000001.cls', b'1\\n')
        else: member(t, '000001.png', png)
    ti = tarfile.TarInfo(name); ti.size = size
    with open(os.path.join(d, 'shard-000000.tar'), 'wb') as f:
        f.write(head.getvalue()[:end]); f.write(ti.tobuf(tarfile.PAX_FORMAT))
        f.seek((size + 511) // 512 * 512, os.SEEK_CUR); f.write(tail.getvalue())

sparse('sparse-4gib-label', '000001.cls', 4 * GIB)
sparse('sparse-2gib-image', '000001.png', 2 * GIB)
`
execPython(WRITE, work)

function execPython(script: string, ...args: string[]): void {
  const r = spawnSync('/usr/bin/python3', ['-c', script, ...args], { encoding: 'utf8' })
  if (r.status !== 0) throw new Error(`python3 failed: ${r.stderr}`)
}

// o3train under a Python parent that reports how it ended and its peak RSS (getrusage of the child).
const RUN = `
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
print(json.dumps({'code': p.returncode, 'stderr': p.stderr, 'maxRssKiB': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
`
const cli = cliCommand('trainer/cli.ts')
function o3train(dataDir: string): { code: number; stderr: string; maxRssKiB: number } {
  const args = [process.execPath, ...cli.execArgv, cli.file, '--data', dataDir, '--dataset', 'webdataset', '--image-size', '28', '--channels', '1']
  const r = spawnSync(
    '/usr/bin/python3',
    ['-c', RUN, ...args, '--model', 'mlp', '--device', 'cpu', '--batch', '2', '--threads', '2', '--epochs', '1', '--no-evaluate'],
    {
      encoding: 'utf8',
      cwd: work,
      env: { ...process.env, O3_LOG_LEVEL: 'warn' },
    },
  )
  if (r.status !== 0) throw new Error(`the python3 runner failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as { code: number; stderr: string; maxRssKiB: number }
}

// Where libtorch, Node and a failed start stay; allocating a declared gigabyte would pass it.
const RSS_LIMIT_KIB = 1 << 20
const cases: [string, RegExp][] = [
  ['pax-dir', /offset \d+/],
  ['gnu-dir', /offset \d+/],
  ['pax-member', /offset \d+/],
  ['gnu-member', /offset \d+/],
  ['4gib-label', /offset \d+/],
  ['60gib-label', /offset \d+/],
  ['sparse-4gib-label', /000001\.cls at offset \d+.*4294967296 bytes/],
  ['sparse-2gib-image', /000001\.png at offset \d+.*2147483648 bytes/],
]
for (const [name, why] of cases) {
  t.test(`${name}: one data error line, exit 91, bounded memory`, async (t) => {
    const dir = path.join(work, name)
    const r = o3train(dir)
    const lines = r.stderr.trim().split('\n')
    t.equal(r.code, 91, `exit 91, not a signal (negative) or an internal error: ${r.stderr}`)
    t.equal(lines.length, 1, `one line: ${r.stderr}`)
    t.match(lines[0], new RegExp(`^o3train: ${path.join(dir, 'shard-000000.tar')}: `), 'names the shard')
    t.match(lines[0], why, 'and the offset')
    t.notMatch(r.stderr, /bad_alloc|std::|Aborted|Segmentation/)
    t.ok(r.maxRssKiB < RSS_LIMIT_KIB, `peak RSS ${Math.round(r.maxRssKiB / 1024)} MiB`)
  })
}

t.test('the same writer makes a shard o3train reads', async (t) => {
  // The control: without the hostile entry the shard trains, so the failures above are the entries'.
  const dir = path.join(work, 'valid')
  mkdirSync(dir)
  execPython(
    `
import io, os, sys, tarfile
from PIL import Image
png = io.BytesIO(); Image.new('L', (28, 28), 128).save(png, 'PNG'); png = png.getvalue()
with tarfile.open(os.path.join(sys.argv[1], 'shard-000000.tar'), 'w', format=tarfile.PAX_FORMAT) as t:
    for key in ('000000', '000002'):
        for ext, data in (('png', png), ('cls', b'3\\n')):
            ti = tarfile.TarInfo(key + '.' + ext); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
`,
    dir,
  )
  const r = o3train(dir)
  t.equal(r.code, 0, r.stderr)
})
