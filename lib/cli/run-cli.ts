import { Command, CommanderError, Option } from 'commander'
import { LOG_FORMATS, setLogFormat, type LogFormat } from '../log.js'
import { printAboveBar } from '../terminal.js'
import { ExitCode } from './exit-codes.js'
import { packageVersion } from '../paths.js'

/**
 * A commander program that reports a bad flag with commander's own message, on one line that
 * points at --help, and then the command's usage exit status (instead of commander's default 1).
 * Every command takes --log-format here; it applies as it is parsed, so to every logger made after.
 */
export function newCommand(name: string): Command {
  return new Command(name)
    .version(`${name} ${packageVersion()}`, '-V, --version', 'print the version and exit')
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

/** What must be undone before a process that hit an error nobody caught exits: an unmount, say. */
const lastRites = new Set<() => unknown>()
/** How long the last rites may take before the process exits anyway. */
const LAST_RITES_MS = 10_000
/**
 * Set once the last resort has begun: it owns the exit from then on, since what its rites undo may
 * let `main` return normally (an unmount ends the mount's session) before they are done.
 */
let dying = false

/**
 * Registers `undo` to run, and be awaited, if the process dies of an error nobody caught (see
 * runCli); returns the function that unregisters it, for when what it undoes is gone.
 */
export function onInternalError(undo: () => unknown): () => void {
  lastRites.add(undo)
  return () => lastRites.delete(undo)
}

/**
 * The last resort for a slip: an unhandled rejection or an uncaught exception would otherwise end
 * the process with Node's own report and status 1, leaving whatever it held (a FUSE mount) behind.
 * It is reported on one line, the registered undos run (for at most LAST_RITES_MS), and the
 * process exits with the internal-error status.
 */
function installLastResort(name: string): void {
  const die = (kind: string) => (err: unknown) => {
    if (dying) return
    dying = true
    process.stderr.write(`${name}: internal error (${kind}): ${oneLine(err)}; this is a bug, please report it with the log\n`)
    if (/^(debug|trace)$/.test(process.env.O3_LOG_LEVEL ?? '')) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`)
    setTimeout(() => process.exit(ExitCode.internal), LAST_RITES_MS).unref()
    void Promise.allSettled([...lastRites].map(async (undo) => undo())).then(() => process.exit(ExitCode.internal))
  }
  process.on('unhandledRejection', die('unhandled rejection'))
  process.on('uncaughtException', die('uncaught exception'))
}

/**
 * The one ending of every command: `main` resolves with an exit status, or throws. A typed error
 * (anything with a numeric `exitCode`) becomes one line on stderr and its status; anything else
 * (a file that cannot be opened, a bug) is one line too, with exit status 70, and its stack with
 * O3_LOG_LEVEL=debug. An error nobody caught at all ends the same way (installLastResort).
 */
export function runCli(name: string, main: () => Promise<number>, options: RunCliOptions = {}): void {
  installLastResort(name)
  const exitOwnedElsewhere = () => dying || options.exitOwnedElsewhere?.() === true
  const finish = (code: number) => {
    if (!exitOwnedElsewhere()) process.exit(code)
  }
  main().then(finish, (err: unknown) => {
    if (exitOwnedElsewhere()) return
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
