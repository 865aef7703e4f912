#!/usr/bin/env node
/** `npm run docs`: renders lib/cli/exit-codes.ts into README.md's exit-code table. */
import { exitCodeTable } from '../lib/cli/exit-codes.js'
import { writeReadmeSection } from './readme.js'

writeReadmeSection('exit-codes', exitCodeTable())
