import { layer } from "../../src/infra/Memory.ts"
import { cacheContract } from "./Cache.contract.ts"

cacheContract("Memory", layer)
