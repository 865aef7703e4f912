// Loading the addon without its libtorch, or with a different one, must fail with one line that
// says how to fix it. What each case proves:
// - mismatched: the real addon loaded with LD_LIBRARY_PATH pointing at stand-in libtorch
//   libraries that lack torch's symbols (RUNPATH ranks below LD_LIBRARY_PATH), a real
//   "undefined symbol" failure of the real addon;
// - missing: a stand-in addon linked against a libtorch_cpu that is then removed, a real
//   "cannot open shared object file" failure; hiding Debian's libtorch from the real addon would
//   take a mount namespace, so this shows the message for the dynamic loader's real error, not
//   that the real addon cannot find a system libtorch;
// - not built: O3_TRAINER_ADDON pointing at a file that does not exist.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { addonPath } from '../addon/index.js'

const work = mkdtempSync(path.join(tmpdir(), 'o3-addon-load-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))
const indexTs = path.resolve(import.meta.dirname, '../addon/index.ts')

// Loads the addon in a fresh node and returns the error it reports (or "loaded").
function loadIn(env: NodeJS.ProcessEnv): { name: string; message: string } {
  const script = `import { loadAddon } from ${JSON.stringify(indexTs)}
try { loadAddon(); console.log(JSON.stringify({ name: 'none', message: 'loaded' })) }
catch (e) { console.log(JSON.stringify({ name: e.name, message: e.message })) }`
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
    cwd: path.dirname(indexTs),
  })
  return JSON.parse(r.stdout.trim().split('\n').at(-1) ?? '{}')
}

// A shared library with the given soname and nothing in it.
function emptyLibrary(dir: string, soname: string): string {
  const src = path.join(work, 'empty.c')
  writeFileSync(src, 'int o3_empty_library;\n')
  const out = path.join(dir, soname)
  execFileSync('cc', ['-shared', '-fPIC', `-Wl,-soname,${soname}`, '-o', out, src])
  return out
}

function neededTorchLibraries(file: string): string[] {
  const dynamic = execFileSync('readelf', ['-d', file], { encoding: 'utf8' })
  return [...dynamic.matchAll(/NEEDED.*\[((?:libtorch|libc10)[^\]]*)\]/g)].map((m) => m[1])
}

t.test('the real addon loads here', async (t) => {
  t.same(loadIn({}), { name: 'none', message: 'loaded' })
})

t.test('a libtorch without the symbols the addon was built against', async (t) => {
  const dir = path.join(work, 'other-libtorch')
  mkdirSync(dir)
  const needed = neededTorchLibraries(addonPath())
  t.ok(needed.length >= 2, `the addon needs ${needed.join(', ')}`)
  for (const soname of needed) emptyLibrary(dir, soname)
  const err = loadIn({ LD_LIBRARY_PATH: dir })
  t.equal(err.name, 'AddonLoadError')
  t.match(err.message, /^the libtorch found at run time does not match the one .* was built against \(.*undefined symbol/)
  t.match(err.message, /rebuild with npm run build:addon/)
  t.notMatch(err.message, /\n/, 'one line')
})

t.test('no libtorch at all', async (t) => {
  const dir = path.join(work, 'missing')
  mkdirSync(dir)
  const lib = emptyLibrary(dir, 'libtorch_cpu.so.99')
  const src = path.join(work, 'addon.c')
  writeFileSync(src, 'int o3_stand_in_addon;\n')
  const addon = path.join(dir, 'stand-in.node')
  execFileSync('cc', ['-shared', '-fPIC', '-o', addon, src, '-Wl,--no-as-needed', lib])
  rmSync(lib)
  t.same(neededTorchLibraries(addon), ['libtorch_cpu.so.99'], 'the stand-in needs a libtorch_cpu')
  const err = loadIn({ O3_TRAINER_ADDON: addon })
  t.equal(err.name, 'AddonLoadError')
  t.match(err.message, /^libtorch not found \(libtorch_cpu\.so\.99\) loading .*stand-in\.node: run scripts\/setup/)
  t.match(err.message, /set LIBTORCH/)
})

t.test('an addon that was never built', async (t) => {
  const err = loadIn({ O3_TRAINER_ADDON: path.join(work, 'nope.node') })
  t.equal(err.name, 'AddonLoadError')
  t.match(err.message, /^trainer addon not built \(.*nope\.node is missing\): run scripts\/setup \(or npm run build:addon\)/)
})
