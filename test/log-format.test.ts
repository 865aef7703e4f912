// Log lines for people and for programs: o3train and o3mount on a real pseudo-terminal print
// readable lines (no JSON) and keep the progress bar whole; piped they print JSON lines;
// --log-format overrides either way; secrets are redacted in both formats. Real S3 server, real
// FUSE mount, real addon, real Fashion-MNIST (a subset).
import t from 'tap'
import { execFile, execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { cliCommand } from '../lib/paths.js'
import { prettyLine } from '../lib/log.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { onTerminal, screenLines } from './support/pty.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { isMounted, mount } from './support/o3mount.js'

const info = await useS3Server(t)
const BUCKET = `log-format-${process.pid}`
await createBucket(info, BUCKET)
const work = mkdtempSync(join(tmpdir(), 'o3-log-format-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))
const data = join(work, 'fmnist')
// 256 training images at batch 32: 8 steps, a checkpoint every 3 of them lands while the bar is up.
writeFashionSubset(data, 256, 64)

const env = { ...process.env, ...serverEnv(info), O3_LOG_LEVEL: 'info' }
const cli = (source: string) => {
  const c = cliCommand(source)
  return [...c.execArgv, c.file]
}
const TRAIN_ARGS = ['--data', data, '--epochs', '1', '--batch', '32', '--device', 'cpu', '--threads', '2']
/** A readable log line: local time, level, message, fields. */
const PRETTY = /^\d\d:\d\d:\d\d\.\d{3} (TRACE|DEBUG|INFO |WARN |ERROR|FATAL) \S/
const BAR = /^epoch 1\/1 \[/
const ESC = String.fromCharCode(27)

function piped(args: string[], extraEnv: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, args, { cwd: work, env: { ...env, ...extraEnv }, maxBuffer: 64 << 20, timeout: 300_000 }, (err, stdout, stderr) => {
      const code = err ? (err as { code?: unknown }).code : 0
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr })
    })
  })
}

t.test('a pino line reads as time, level, message and key=value fields; control characters are escaped', async (t) => {
  const line = JSON.stringify({
    level: 40,
    time: '2026-12-05T10:11:12.345Z',
    pid: 1,
    name: 'o3mount',
    key: 'a b',
    plain: 'bafy',
    n: 3,
    obj: { x: 1 },
    err: { type: 'Error', message: 'boom', stack: 'Error: boom\n    at x' },
    evil: 'x\x1b[2Jy',
    msg: 'skipped \x07key',
  })
  const shown = prettyLine(line)
  const at = new Date('2026-12-05T10:11:12.345Z')
  const hh = [at.getHours(), at.getMinutes(), at.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':')
  t.equal(shown, `${hh}.345 WARN  skipped \\u0007key key="a b" plain=bafy n=3 obj={"x":1} err=boom evil="x\\u001b[2Jy"`)
  t.notOk(prettyLine(line, true).includes('\x1b[2J'), 'no escape sequence from a value reaches the terminal')
  t.ok(prettyLine(line, true).includes('\x1b[33mWARN \x1b[0m'), 'the level in colour on a terminal')
  t.equal(prettyLine('not json'), 'not json')
})

t.test('secrets are redacted in both formats', async (t) => {
  const log = cliCommand('lib/log.ts')
  const script = `
import { createLogger, setLogFormat } from ${JSON.stringify(log.file)}
setLogFormat(process.argv[1])
createLogger('secret-test').info({ credentials: { accessKeyId: 'AKID-1', secretAccessKey: 'SECRET-2' }, secretAccessKey: 'SECRET-3', headers: { authorization: 'AWS4-HMAC SECRET-4' }, privateKey: '0xSECRET-5' }, 'connecting')
`
  for (const format of ['json', 'pretty']) {
    const r = await piped([...log.execArgv, '--input-type=module', '-e', script, format])
    t.equal(r.code, 0, r.stderr)
    t.notMatch(r.stderr, /SECRET|AKID-1/, `${format}: no secret`)
    t.match(r.stderr, /\[redacted\]/, `${format}: the fields are there, redacted`)
    if (format === 'json') t.match(JSON.parse(r.stderr), { msg: 'connecting', secretAccessKey: '[redacted]' })
    else t.match(r.stderr, PRETTY)
  }
})

t.test('o3train on a terminal: readable log lines above an unbroken progress bar, no JSON', async (t) => {
  const term = onTerminal(process.execPath, [...cli('trainer/cli.ts'), ...TRAIN_ARGS, '--ckpt', `o3://${BUCKET}/runs/tty`, '--ckpt-every', '3'], {
    env,
    cwd: work,
  })
  t.teardown(() => term.child.kill('SIGKILL'))
  t.equal(await term.done, 0, term.output())
  const raw = term.output()
  t.notMatch(raw, /"level":|"msg":|"event":"progress"/, 'no JSON on the terminal')
  const lines = screenLines(raw).filter((l) => l !== '')
  const logs = lines.filter((l) => PRETTY.test(l))
  t.ok(
    logs.some((l) => / INFO {2}training device=\{"type":"cpu"/.test(l)),
    `the start line:\n${lines.join('\n')}`,
  )
  t.ok(
    logs.some((l) => / INFO {2}checkpoint upload started step=3 epoch=0$/.test(l)),
    'a checkpoint logged mid-epoch',
  )
  t.ok(
    logs.some((l) => / INFO {2}epoch done epoch=1 .*accuracy=/.test(l)),
    'the epoch line',
  )
  // What the terminal shows: log lines whole, the bar on its own line, the text summary (stdout).
  const summary = /^(device|trained|test|checkpoint): /
  t.same(
    lines.filter((l) => !PRETTY.test(l) && !BAR.test(l) && !summary.test(l)),
    [],
    'every line is a log line, the bar or the summary',
  )
  t.notOk(
    lines.some((l) => BAR.test(l) && /\d\d:\d\d:\d\d\.\d{3} /.test(l)),
    'no log line written into the bar',
  )
  // Every line logged shows whole, once, in order: none overwritten by the bar or by a later line.
  const plain = raw.replace(new RegExp(`${ESC}(\\[[\\d;?]*[A-Za-z]|[78])`, 'g'), '')
  const written = [...plain.matchAll(/(\d\d:\d\d:\d\d\.\d{3} (?:INFO|WARN|ERROR) [^\r\n]*)\r?\n/g)].map((m) => m[1]!.trimEnd())
  t.same(logs, written, 'the log lines on the screen are the lines logged')
  t.ok(
    lines.some((l) => BAR.test(l) && /100% 256\/256 samples \| test acc/.test(l)),
    'the finished bar stays on its own line',
  )
  // A line logged while the bar was up: the bar's line cleared first, the bar drawn again after it.
  t.ok(raw.lastIndexOf('epoch 1/1 [', raw.indexOf('checkpoint upload started step=3')) >= 0, 'the bar was up before it')
  // ESC[2K clears the line; ESC[...m colours the level; ESC 7 (the bar's new start) and ESC[1G precede the redrawn bar.
  const redrawn = new RegExp(
    `epoch 1/1 \\[[^\\n]*\\r${ESC}\\[2K\\d\\d:\\d\\d:\\d\\d\\.\\d{3} (${ESC}\\[\\d+m)?INFO (${ESC}\\[0m)? checkpoint upload started step=3[^\\n]*\\n(${ESC}7|${ESC}\\[[\\d;?]*[A-Za-z])*epoch 1/1 \\[`,
  )
  t.match(raw, redrawn, 'the bar line cleared, the log line written whole, the bar drawn again')
})

t.test('o3train piped: JSON lines; --log-format overrides the terminal either way', async (t) => {
  const r = await piped([...cli('trainer/cli.ts'), ...TRAIN_ARGS])
  t.equal(r.code, 0, r.stderr)
  const lines = r.stderr.trim().split('\n')
  t.ok(lines.length > 2)
  for (const l of lines) t.doesNotThrow(() => JSON.parse(l), `a JSON line: ${l}`)
  t.ok(lines.some((l) => (JSON.parse(l) as { msg?: string }).msg === 'training'))

  const pretty = await piped([...cli('trainer/cli.ts'), ...TRAIN_ARGS, '--log-format', 'pretty'])
  t.equal(pretty.code, 0, pretty.stderr)
  t.ok(
    pretty.stderr.split('\n').some((l) => PRETTY.test(l) && / INFO {2}training /.test(l)),
    'pretty when asked, even piped',
  )
  t.notMatch(pretty.stderr, /^\{/m, 'no JSON line, progress included')
  t.ok(
    pretty.stderr.split('\n').some((l) => PRETTY.test(l) && / INFO {2}epoch 1\/1 done .*done=256 total=256/.test(l)),
    'progress as readable lines',
  )
  t.notOk(pretty.stderr.includes('\x1b['), 'no colour off a terminal')

  const term = onTerminal(process.execPath, [...cli('trainer/cli.ts'), ...TRAIN_ARGS, '--log-format', 'json'], { env, cwd: work })
  t.teardown(() => term.child.kill('SIGKILL'))
  t.equal(await term.done, 0, term.output())
  t.match(term.output(), /"msg":"training"/, 'JSON on a terminal when asked')
  t.notMatch(term.output(), /epoch 1\/1 \[/, 'and progress as JSON lines too, no bar')

  const bad = await piped([...cli('trainer/cli.ts'), ...TRAIN_ARGS, '--log-format', 'xml'])
  t.equal(bad.code, 64)
  t.match(bad.stderr, /--log-format.*xml.*(auto|pretty|json)/)
})

t.test('o3mount in the foreground on a terminal: readable lines, no JSON; piped: JSON', async (t) => {
  const m = await mount(t, info, BUCKET)
  await m.stop()
  const pipedLines = m.log().trim().split('\n')
  t.ok(pipedLines.length >= 2)
  for (const l of pipedLines) t.doesNotThrow(() => JSON.parse(l), `piped, a JSON line: ${l}`)

  const mountpoint = mkdtempSync(join(tmpdir(), 'o3-log-format-mnt-'))
  const stats = join(work, 'mount-stats.json')
  const term = onTerminal(process.execPath, [...cli('fs-driver/cli.ts'), mountpoint, BUCKET, '--stats-file', stats], { env, cwd: work })
  t.teardown(async () => {
    // Ours alone: the mount this test made, and its process.
    if (isMounted(mountpoint)) execFileSync('fusermount', ['-u', '-z', mountpoint])
    term.child.kill('SIGKILL')
    rmSync(mountpoint, { recursive: true, force: true })
  })
  await term.waitFor(/INFO {2}mounted mountpoint=/)
  term.child.kill('SIGTERM')
  t.equal(await term.done, 0, term.output())
  const lines = screenLines(term.output()).filter((l) => l !== '')
  t.notMatch(term.output(), /"level":/, 'no JSON on the terminal')
  t.ok(lines.length >= 3, lines.join('\n'))
  for (const l of lines) t.match(l, PRETTY, l)
  t.ok(lines.some((l) => / INFO {2}unmounted /.test(l)))
  t.notOk(isMounted(mountpoint), 'unmounted')
})
