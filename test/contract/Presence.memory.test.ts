import { layer } from "../../src/infra/Memory.ts"
import { presenceContract } from "./Presence.contract.ts"

presenceContract("Memory", layer)
