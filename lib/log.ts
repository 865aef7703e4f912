import { pino, type Logger, type DestinationStream } from 'pino'

export type { Logger }

/**
 * Structured JSON logs on stderr (or a file for daemons). Credentials are redacted by path as a
 * second line of defence: no code path is meant to hand them to a logger in the first place.
 * A log file is passed as a descriptor the caller opened (o3mount opens its log without following symlinks).
 */
export function createLogger(component: string, destination?: DestinationStream | number): Logger {
  const dest = typeof destination === 'number' ? pino.destination({ fd: destination, sync: false }) : (destination ?? pino.destination(2))
  return pino(
    {
      name: component,
      level: process.env.O3_LOG_LEVEL ?? 'info',
      base: { pid: process.pid },
      redact: {
        paths: [
          'credentials',
          '*.credentials',
          'secretAccessKey',
          '*.secretAccessKey',
          'accessKeyId',
          '*.accessKeyId',
          'privateKey',
          '*.privateKey',
          'headers.authorization',
          '*.headers.authorization',
        ],
        censor: '[redacted]',
      },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    dest,
  )
}

/** A logger that drops everything, for library use without a caller-supplied logger. */
export const silentLogger: Logger = pino({ level: 'silent' })
