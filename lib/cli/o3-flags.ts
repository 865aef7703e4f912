import type { Command } from 'commander'
import type { O3Flags } from '../o3/config.js'

/** The connection flags every command takes, with one help text. Keys never come from argv. */
const FLAGS: { flag: string; key: keyof O3Flags; help: string }[] = [
  {
    flag: '--endpoint <url>',
    key: 'endpoint',
    help: 'S3 endpoint (else O3_ENDPOINT, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL; default https://o3-rc2.akave.xyz)',
  },
  { flag: '--region <region>', key: 'region', help: 'region (else O3_REGION, AWS_REGION; default akave-network)' },
  {
    flag: '--credentials-file <file>',
    key: 'credentialsFile',
    help: 'file of O3_ACCESS_KEY_ID=... / O3_SECRET_ACCESS_KEY=... lines (keys are never taken from argv)',
  },
  { flag: '--profile <name>', key: 'profile', help: 'AWS shared-config profile' },
  {
    flag: '--ca-bundle <file>',
    key: 'caBundle',
    help: 'PEM file of the CA certificates HTTPS trusts, instead of the system store (else O3_CA_BUNDLE, AWS_CA_BUNDLE)',
  },
  {
    flag: '--max-attempts <n>',
    key: 'maxAttempts',
    help: 'attempts per request, 1-20, with backoff between them (else O3_MAX_ATTEMPTS, AWS_MAX_ATTEMPTS; default 5)',
  },
]

export function addO3Flags<C extends Command>(cmd: C): C {
  for (const f of FLAGS) cmd.option(f.flag, f.help)
  cmd.addHelpText(
    'after',
    '\nCredentials come from O3_ACCESS_KEY_ID / O3_SECRET_ACCESS_KEY, O3_CREDENTIALS_FILE or the AWS chain, never from the command line.',
  )
  return cmd
}

/** The same flags as arguments for a child command (e.g. the o3mount an o3train run starts). */
export function o3FlagsToArgv(flags: O3Flags): string[] {
  return FLAGS.flatMap((f) => (flags[f.key] ? [f.flag.split(' ')[0]!, flags[f.key]!] : []))
}

/** Only the connection flags of a larger options object. */
export function pickO3Flags(o: O3Flags): O3Flags {
  return Object.fromEntries(FLAGS.filter((f) => o[f.key] !== undefined).map((f) => [f.key, o[f.key]]))
}
