import { InvalidArgumentError, Option } from 'commander'
import { readUserFile } from '../lib/read-user-file.js'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import { addO3Flags } from '../lib/cli/o3-flags.js'
import { numberArg, positiveInt } from '../lib/cli/number-arg.js'
import { newCommand } from '../lib/cli/run-cli.js'
import type { O3Flags } from '../lib/o3/index.js'
import { TRUST_SIGNER_FLAG } from '../checkpoint/trust.js'

/** Everything `o3train` takes; the CLI, a config file and library callers share this shape. */
export interface TrainOptions extends O3Flags {
  /** A directory (often an o3mount mountpoint) or `o3://bucket/prefix`, which is mounted for the run. */
  data: string
  dataset: 'fashion-mnist' | 'imagefolder' | 'webdataset'
  model: 'cnn' | 'mlp' | 'resnet'
  epochs: number
  batch: number
  lr: number
  optimizer: 'sgd' | 'adam'
  momentum: number
  weightDecay: number
  device: 'auto' | 'cpu' | 'cuda'
  seed: number
  threads?: number
  /** Image side for imagefolder and webdataset data. */
  imageSize: number
  /** Image channels for imagefolder and webdataset data: 3 (RGB) or 1 (gray). */
  channels: 1 | 3
  /** webdataset: shard names under --data, brace ranges allowed; default every `*.tar`. */
  shards?: string
  /** webdataset: consecutive samples shuffled together. */
  shuffleWindow: number
  /** `o3://bucket/prefix/run`; no checkpoints when absent. */
  ckpt?: string
  /** A number of steps, or `epoch`. */
  ckptEvery: number | 'epoch'
  /** `auto` (from latest if any), `none`, a checkpoint name, or a CID. */
  resume: string
  /** A local safetensors file whose model weights a fresh run starts from; ignored when resuming. */
  init?: string
  keepLast: number
  keepEvery: number
  /** Signer addresses a resumed checkpoint must be signed by; default: the one key the run's checkpoints are signed by. */
  trustSigner?: string[]
  /**
   * The test set, in the layout of --dataset (image size and channels as for --data): a directory.
   * Default: fashion-mnist's t10k files beside the training files; none for imagefolder and webdataset.
   */
  testData?: string
  /** Evaluate on the test set after each epoch (when there is one). */
  evaluate: boolean
  /** Model hyperparameters (hidden, layers, channels, dropout, ...); the core rejects unknown ones. */
  modelOpt: Record<string, number>
  /** Seconds a collective may take before the rank exits non-zero (under torchrun). */
  distTimeout: number
  /** The last incomplete global batch of an epoch; default short for one process, drop for a job. */
  lastBatch?: 'short' | 'drop' | 'pad'
  /** Resume a checkpoint saved with another global batch at the start of its epoch. */
  restartDataPosition: boolean
  /** Re-run under a standalone torchrun with this many local ranks. */
  nprocPerNode?: number
  /** The control socket of the o3mount that --data lies on: each epoch's read order is announced to it. */
  mountControl?: string
}

export const DEFAULTS: Omit<TrainOptions, 'data'> = {
  dataset: 'fashion-mnist',
  model: 'cnn',
  epochs: 1,
  batch: 64,
  lr: 0.01,
  optimizer: 'sgd',
  momentum: 0.9,
  weightDecay: 0,
  device: 'auto',
  seed: 1,
  imageSize: 64,
  channels: 3,
  shuffleWindow: 1000,
  ckptEvery: 'epoch',
  resume: 'auto',
  keepLast: 3,
  keepEvery: 0,
  evaluate: true,
  modelOpt: {},
  distTimeout: 300,
  restartDataPosition: false,
}

export class OptionsError extends CliError {
  constructor(message: string) {
    super(message, ExitCode.usage)
  }
}

const nonNegInt = (name: string) => numberArg(name, { integer: true, positive: false })
const positiveNum = (name: string) => numberArg(name, { integer: false, positive: true })
const nonNegNum = (name: string) => numberArg(name, { integer: false, positive: false })
const channelsArg = (v: string): 1 | 3 => {
  if (v !== '1' && v !== '3') throw new InvalidArgumentError('--channels must be 1 or 3')
  return Number(v) as 1 | 3
}
/** `key=value` into the accumulated map, for a repeatable flag. */
const modelOpt = (v: string, acc: Record<string, number> = {}): Record<string, number> => {
  const m = /^([A-Za-z_]\w*)=(.+)$/.exec(v)
  if (!m || !Number.isFinite(Number(m[2]))) throw new InvalidArgumentError(`--model-opt takes key=number (e.g. dropout=0), not ${JSON.stringify(v)}`)
  return { ...acc, [m[1]]: Number(m[2]) }
}
const every = (v: string): number | 'epoch' => (v === 'epoch' ? 'epoch' : positiveInt('--ckpt-every')(v))

/** Checks a whole options object (from flags merged over a config file) and fills defaults. */
export function validateOptions(raw: Partial<TrainOptions> & Record<string, unknown>): TrainOptions {
  const known = new Set([
    ...Object.keys(DEFAULTS),
    'data',
    'threads',
    'ckpt',
    'init',
    'shards',
    'testData',
    'lastBatch',
    'nprocPerNode',
    'mountControl',
    'trustSigner',
    'endpoint',
    'region',
    'credentialsFile',
    'profile',
  ])
  for (const k of Object.keys(raw)) if (!known.has(k)) throw new OptionsError(`unknown option "${k}"; see o3train --help`)
  const o = { ...DEFAULTS, ...raw } as TrainOptions
  if (!o.data) throw new OptionsError('--data is required: a directory (e.g. an o3mount mountpoint) or o3://bucket/prefix')
  const oneOf = <T extends string>(name: string, v: T, allowed: readonly T[]) => {
    if (!allowed.includes(v)) throw new OptionsError(`${name} must be one of ${allowed.join(', ')} (got ${JSON.stringify(v)})`)
  }
  oneOf('--dataset', o.dataset, ['fashion-mnist', 'imagefolder', 'webdataset'])
  oneOf('--model', o.model, ['cnn', 'mlp', 'resnet'])
  oneOf('--optimizer', o.optimizer, ['sgd', 'adam'])
  oneOf('--device', o.device, ['auto', 'cpu', 'cuda'])
  for (const [name, v] of [
    ['epochs', o.epochs],
    ['batch', o.batch],
    ['imageSize', o.imageSize],
    ['shuffleWindow', o.shuffleWindow],
  ] as const) {
    if (!Number.isInteger(v) || v <= 0) throw new OptionsError(`${name} must be a positive integer (got ${v})`)
  }
  if (o.channels !== 1 && o.channels !== 3) throw new OptionsError(`channels must be 1 or 3 (got ${o.channels})`)
  if (o.shards !== undefined && o.dataset !== 'webdataset') throw new OptionsError('--shards applies to --dataset webdataset only')
  if (o.testData !== undefined && (typeof o.testData !== 'string' || o.testData === '' || o.testData.startsWith('o3://')))
    throw new OptionsError('--test-data takes a directory (for a test set in O3, mount it with o3mount first)')
  if (!(o.lr > 0)) throw new OptionsError(`lr must be a positive number (got ${o.lr})`)
  if (o.ckptEvery !== 'epoch' && !(Number.isInteger(o.ckptEvery) && o.ckptEvery > 0)) throw new OptionsError('ckptEvery must be a number of steps or "epoch"')
  if (o.lastBatch !== undefined) oneOf('--last-batch', o.lastBatch, ['short', 'drop', 'pad'])
  if (!(o.distTimeout > 0)) throw new OptionsError(`distTimeout must be a positive number of seconds (got ${o.distTimeout})`)
  if (!o.modelOpt || typeof o.modelOpt !== 'object' || Object.values(o.modelOpt).some((v) => typeof v !== 'number' || !Number.isFinite(v))) {
    throw new OptionsError('modelOpt must map hyperparameter names to numbers')
  }
  if (o.init !== undefined && (typeof o.init !== 'string' || o.init === '')) throw new OptionsError('--init must name a local safetensors file')
  if (o.trustSigner !== undefined && !(Array.isArray(o.trustSigner) && o.trustSigner.every((a) => typeof a === 'string')))
    throw new OptionsError('trustSigner must be a list of 0x addresses')
  if (o.mountControl !== undefined) {
    if (typeof o.mountControl !== 'string' || o.mountControl === '') throw new OptionsError('--mount-control must name the control socket of an o3mount')
    if (o.data.startsWith('o3://'))
      throw new OptionsError('--mount-control is for --data on a mount started elsewhere; with --data o3:// the run announces to the mount it starts')
  }
  if (o.ckpt && !/^o3:\/\/[^/]+\/.+/.test(o.ckpt)) throw new OptionsError(`--ckpt must look like o3://bucket/prefix/run (got ${o.ckpt})`)
  return o
}

function readConfigFile(path: string): Record<string, unknown> {
  const text = readUserFile(path, 'config file', (message) => new OptionsError(message))
  try {
    const parsed = JSON.parse(text) as unknown
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object')
    return parsed as Record<string, unknown>
  } catch (err) {
    throw new OptionsError(`config file ${path} is not a JSON object: ${(err as Error).message}`)
  }
}

/** Parses argv: flags win over the config file, which wins over the defaults. */
export function parseTrainArgs(argv: string[]): TrainOptions {
  const cmd = newCommand('o3train')
    .description('Train a model on files (an o3mount mountpoint or any directory), checkpointing to O3')
    .option('--config <file>', 'a JSON file with any of the options below (camelCase keys); flags win')
    .option('--data <dir|o3://bucket/prefix>', 'training data: a directory, or an O3 location to mount for the run')
    .addOption(new Option('--dataset <kind>', 'data layout').choices(['fashion-mnist', 'imagefolder', 'webdataset']))
    .addOption(new Option('--model <name>', 'model').choices(['cnn', 'mlp', 'resnet']))
    .option('--epochs <n>', `epochs (default ${DEFAULTS.epochs})`, positiveInt('--epochs'))
    .option('--batch <n>', `batch size (default ${DEFAULTS.batch})`, positiveInt('--batch'))
    .option('--lr <x>', `learning rate (default ${DEFAULTS.lr})`, positiveNum('--lr'))
    .addOption(new Option('--optimizer <name>', `optimizer (default ${DEFAULTS.optimizer})`).choices(['sgd', 'adam']))
    .option('--momentum <x>', `SGD momentum (default ${DEFAULTS.momentum})`, nonNegNum('--momentum'))
    .option('--weight-decay <x>', 'weight decay (default 0)', nonNegNum('--weight-decay'))
    .addOption(new Option('--device <d>', 'auto picks cuda when available').choices(['auto', 'cpu', 'cuda']))
    .option('--seed <n>', `seed for weights and shuffling (default ${DEFAULTS.seed})`, nonNegInt('--seed'))
    .option('--threads <n>', "CPU threads for torch (default one per core, shared among a node's ranks)", positiveInt('--threads'))
    .option('--image-size <n>', `image side for imagefolder and webdataset (default ${DEFAULTS.imageSize})`, positiveInt('--image-size'))
    .option('--channels <n>', 'image channels for imagefolder and webdataset: 3 RGB (default), 1 gray', channelsArg)
    .option('--shards <pattern>', "webdataset shards under --data, e.g. 'train-{000000..000127}.tar' (default every *.tar)")
    .option('--shuffle-window <n>', `webdataset: consecutive samples shuffled together (default ${DEFAULTS.shuffleWindow})`, positiveInt('--shuffle-window'))
    .option('--test-data <dir>', 'the test set in the --dataset layout (default: fashion-mnist t10k files beside the training files; none otherwise)')
    .option('--ckpt <o3://bucket/prefix/run>', 'where checkpoints go; none when absent')
    .option('--ckpt-every <steps|epoch>', 'checkpoint every N steps, or at the end of each epoch (default epoch)', every)
    .option('--resume <auto|none|name|cid>', 'resume from latest (auto), nothing, a checkpoint name, or a CID (default auto)')
    .option('--init <file.safetensors>', 'start a fresh run from these model weights (model.* or bare state_dict names); ignored when resuming')
    .option(...TRUST_SIGNER_FLAG)
    .option('--keep-last <n>', `keep the last N checkpoints (default ${DEFAULTS.keepLast})`, positiveInt('--keep-last'))
    .option('--keep-every <k>', 'also keep every Kth checkpoint (default 0: none)', nonNegInt('--keep-every'))
    .option('--no-evaluate', 'skip the test-set evaluation after each epoch')
    .option('--model-opt <key=value>', 'a model hyperparameter (hidden, layers, channels, dropout, ...); repeatable', modelOpt)
    .option('--nproc-per-node <n>', 'run as N local ranks under a standalone torchrun', positiveInt('--nproc-per-node'))
    .option(
      '--dist-timeout <s>',
      `seconds a collective may wait for the other ranks before this rank exits (default ${DEFAULTS.distTimeout})`,
      positiveNum('--dist-timeout'),
    )
    .addOption(
      new Option('--last-batch <mode>', "an epoch's last incomplete global batch (default: short for one process, drop under torchrun)").choices([
        'short',
        'drop',
        'pad',
      ]),
    )
    .option('--restart-data-position', 'resume a checkpoint saved with another global batch (batch x ranks) at the start of its epoch')
    .option('--mount-control <socket>', "the --control-socket of the o3mount --data is on: each epoch's read order is announced to it")
  addO3Flags(cmd).parse(argv, { from: 'user' })
  // --log-format is every command's, already applied (lib/cli/run-cli.ts): not a training option.
  const { config, logFormat: _logFormat, ...flags } = cmd.opts<Record<string, unknown>>()
  const fromFile = typeof config === 'string' ? readConfigFile(config) : {}
  // commander reports `evaluate: true` for an absent --no-evaluate; only an explicit flag overrides the file.
  if (cmd.getOptionValueSource('evaluate') === 'default') delete flags.evaluate
  return validateOptions({ ...fromFile, ...flags })
}
