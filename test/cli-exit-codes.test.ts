import { spawn } from 'node:child_process'
import t from 'tap'
import { ExitCode, exitCodeTable } from '../lib/cli/exit-codes.js'
import { cliCommand, packageVersion } from '../lib/paths.js'
import { readReadmeSection } from '../scripts/readme.js'

t.test("README's exit-code table is the one the commands use", async (t) => {
  t.equal(readReadmeSection('exit-codes'), exitCodeTable(), 'run `npm run build && npm run docs` to regenerate it')
})

function run(source: string, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const cli = cliCommand(source)
  const child = spawn(process.execPath, [...cli.execArgv, cli.file, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()))
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()))
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })))
}

const COMMANDS: [string, string, number][] = [
  ['o3mount', 'fs-driver/cli.ts', ExitCode.badOption],
  ['o3train', 'trainer/cli.ts', ExitCode.usage],
  ['o3ckpt', 'checkpoint/cli.ts', ExitCode.usage],
  ['o3upload', 'upload/cli.ts', ExitCode.usage],
]

for (const [name, source, usage] of COMMANDS) {
  t.test(`${name}: an unknown flag is a usage error with its exit status; --help and --version exit 0`, async (t) => {
    const bad = await run(source, ['--no-such-flag'])
    t.equal(bad.code, usage, bad.stderr)
    t.match(bad.stderr, /unknown option '--no-such-flag'/)
    t.match(bad.stderr, new RegExp(`see ${name} --help`))
    const help = await run(source, ['--help'])
    t.equal(help.code, 0, help.stderr)
    t.match(help.stdout, /-V, --version/)
    const version = await run(source, ['--version'])
    t.equal(version.code, 0, version.stderr)
    t.equal(version.stdout, `${name} ${packageVersion()}\n`, 'the name and the package version')
  })
}
