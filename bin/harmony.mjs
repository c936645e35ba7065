#!/usr/bin/env node
// The npm bin: Node (22.18 and later) runs the TypeScript entry point itself,
// stripping its types, so production needs no loader. `tsconfig.json` keeps
// the code strippable (`erasableSyntaxOnly`).
//
// Node's compile cache (in the OS temporary directory, keyed by source and
// Node version) keeps the stripped and compiled modules between starts: a
// start on an unchanged checkout spends about half the CPU on loading code.
import module from "node:module"

// A young generation of Node 20's size (16 MiB semi-spaces). Node 24 sizes it
// from the machine's memory — 64 MiB semi-spaces on 24 GiB — and a node
// touches all of it: 64 MiB of RSS idle, 128 MiB with 10,000 connections
// (docs/benchmarks.md). V8 reads the flag only at start, so the process
// re-executes itself (same pid) with it, unless it was given already.
const semiSpace = "--max-semi-space-size"
const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? "").split(/\s+/)].some((arg) =>
  arg.startsWith(semiSpace)
)
if (!given && typeof process.execve === "function") {
  process.execve(
    process.execPath,
    [process.execPath, `${semiSpace}=16`, ...process.execArgv, ...process.argv.slice(1)],
    process.env
  )
}

module.enableCompileCache?.()
await import("../src/main.ts")
