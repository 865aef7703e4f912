import { InvalidArgumentError } from 'commander'

/** A commander parser for a number flag: an integer or any finite number, > 0 or >= 0. */
export const numberArg =
  (name: string, { integer, positive }: { integer: boolean; positive: boolean }) =>
  (v: string): number => {
    const n = Number(v)
    if (!(integer ? Number.isInteger(n) : Number.isFinite(n)) || (positive ? n <= 0 : n < 0)) {
      const what = positive ? `a positive ${integer ? 'integer' : 'number'}` : `${integer ? 'an integer' : 'a number'} >= 0`
      throw new InvalidArgumentError(`${name} must be ${what}`)
    }
    return n
  }

export const positiveInt = (name: string) => numberArg(name, { integer: true, positive: true })
