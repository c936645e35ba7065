#!/usr/bin/env node
// The npm bin: Node (22.18 and later) runs the TypeScript entry point itself,
// stripping its types, so production needs no loader. `tsconfig.json` keeps
// the code strippable (`erasableSyntaxOnly`).
await import("../src/main.ts")
