#!/usr/bin/env node
// The npm bin: runs the TypeScript entry point through tsx's loader, so the
// binary and `npm start` run the very same code.
import { register } from "tsx/esm/api"
register()
await import("../src/main.ts")
