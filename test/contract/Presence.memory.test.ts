import { layer } from "../../src/adapters/memory/Memory.ts"
import { presenceContract } from "./Presence.contract.ts"

presenceContract("Memory", layer)
