import { readFile } from 'node:fs/promises'
import type { StateTensor, Trainer } from '../addon/index.js'
import { parseSafetensors } from '../checkpoint/safetensors.js'
import { OptionsError } from './options.js'

const MODEL = 'model.'
/** Mismatches named in the error before the rest are only counted. */
const LISTED = 5

const describe = (t: Pick<StateTensor, 'dtype' | 'shape'>) => `${t.dtype} [${t.shape.join(', ')}]`

/**
 * The model tensors of a safetensors file, named as the trainer names them (`model.<name>`): the
 * file's `model.*` entries when it has any (an o3train checkpoint, whose other state is left
 * out), else every entry as a bare state_dict() name (a file written by PyTorch).
 */
export function initTensors(file: StateTensor[]): StateTensor[] {
  const prefixed = file.filter((t) => t.name.startsWith(MODEL))
  return prefixed.length > 0 ? prefixed : file.map((t) => ({ ...t, name: MODEL + t.name }))
}

/**
 * `state` (a trainer's whole stateDict()) with its model tensors replaced by `init`'s. Every
 * name, dtype and shape must match: each mismatch is one clause of the OptionsError.
 */
export function withInitWeights(state: StateTensor[], init: StateTensor[], what: { file: string; model: string }): StateTensor[] {
  const given = new Map(init.map((t) => [t.name, t]))
  const own = state.filter((t) => t.name.startsWith(MODEL))
  const ownNames = new Set(own.map((t) => t.name))
  const bare = (name: string) => name.slice(MODEL.length)
  const problems = [
    ...own.filter((t) => !given.has(t.name)).map((t) => `missing ${bare(t.name)} (${describe(t)})`),
    ...init.filter((t) => !ownNames.has(t.name)).map((t) => `unexpected ${bare(t.name)} (${describe(t)})`),
    ...own.flatMap((t) => {
      const g = given.get(t.name)
      return g && describe(g) !== describe(t) ? [`${bare(t.name)} is ${describe(g)}, the model's is ${describe(t)}`] : []
    }),
  ]
  if (problems.length > 0) {
    const more = problems.length > LISTED ? `; and ${problems.length - LISTED} more` : ''
    throw new OptionsError(`--init ${what.file} does not fit the ${what.model} model: ${problems.slice(0, LISTED).join('; ')}${more}`)
  }
  return state.map((t) => given.get(t.name) ?? t)
}

/** Reads a local safetensors file; an unreadable or malformed one is an OptionsError. */
export async function readInitFile(path: string): Promise<StateTensor[]> {
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (err) {
    throw new OptionsError(`--init ${path}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
  try {
    return initTensors(parseSafetensors(bytes, path).tensors)
  } catch (err) {
    throw new OptionsError(`--init ${(err as Error).message}: give a safetensors file`)
  }
}

/** Starts `trainer`'s model from the weights in `path`, leaving its optimizer, RNG and data position as they are. */
export async function applyInitWeights(trainer: Trainer, path: string): Promise<number> {
  const init = await readInitFile(path)
  await trainer.loadStateDict(withInitWeights(await trainer.stateDict(), init, { file: path, model: trainer.model.name }))
  return init.length
}
