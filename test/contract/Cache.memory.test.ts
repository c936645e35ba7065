import { layer } from "../../src/adapters/memory/Memory.ts"
import { cacheContract } from "./Cache.contract.ts"

cacheContract("Memory", layer)
