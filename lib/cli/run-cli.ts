import { Command, CommanderError, Option } from 'commander'
import { LOG_FORMATS, setLogFormat, type LogFormat } from '../log.js'
import { printAboveBar } from '../terminal.js'
import { ExitCode } from './exit-codes.js'

/**
 * A commander program that reports a bad flag with commander's own message, on one line that
 * points at --help, and then the command's usage exit status (instead of commander's default 1).
 * Every command takes --log-format here; it applies as it is parsed, so to every logger made after.
 */
export function newCommand(name: string): Command {
  return new Command(name)
    .exitOverride()
    .configureOutput({
      outputError: (message, write) => write(`${message.trimEnd()} (see ${name} --help)\n`),
    })
    .addOption(
      new Option('--log-format <format>', 'log lines: readable on a terminal and JSON otherwise (auto), or always pretty, or always json')
        .choices(LOG_FORMATS)
        .default('auto'),
    )
    .on('option:log-format', (format: LogFormat) => setLogFormat(format))
}

export interface RunCliOptions {
  /** Exit status for a bad flag or argument (o3mount keeps its own, 80). */
  usageExit?: number
  /** True when something else already owns the exit (a second signal's forced shutdown). */
  exitOwnedElsewhere?: () => boolean
}

/**
 * The one ending of every command: `main` resolves with an exit status, or throws. A typed error
 * (anything with a numeric `exitCode`) becomes one line on stderr and its status; anything else
 * (a file that cannot be opened, a bug) is one line too, with exit status 70, and its stack with
 * O3_LOG_LEVEL=debug.
 */
export function runCli(name: string, main: () => Promise<number>, options: RunCliOptions = {}): void {
  const finish = (code: number) => {
    if (!options.exitOwnedElsewhere?.()) process.exit(code)
  }
  main().then(finish, (err: unknown) => {
    if (options.exitOwnedElsewhere?.()) return
    if (err instanceof CommanderError) {
      // commander has printed its message (or the help) already.
      return finish(
        err.exitCode === 0 || err.code === 'commander.helpDisplayed' || err.code === 'commander.version' ? ExitCode.ok : (options.usageExit ?? ExitCode.usage),
      )
    }
    const code = (err as { exitCode?: unknown } | null)?.exitCode
    printAboveBar(process.stderr, `${name}: ${oneLine(err)}\n`)
    if (typeof code === 'number') return finish(code)
    if (/^(debug|trace)$/.test(process.env.O3_LOG_LEVEL ?? '')) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`)
    finish(ExitCode.internal)
  })
}

export function oneLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!
}
