import { CliError } from '../lib/cli/exit-codes.js'

/** A start-up or CLI failure of the mount: one line saying what is wrong and what to do, and its exit status. */
export class MountError extends CliError {}
