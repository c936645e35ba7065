#!/usr/bin/env node
// The npm bin: Node (22.18 and later) runs the TypeScript entry point itself,
// stripping its types, so production needs no loader. `tsconfig.json` keeps
// the code strippable (`erasableSyntaxOnly`).
//
// Node's compile cache (in the OS temporary directory, keyed by source and
// Node version) keeps the stripped and compiled modules between starts: a
// start on an unchanged checkout spends about half the CPU on loading code.
import module from "node:module"

module.enableCompileCache?.()
await import("../src/main.ts")
