import * as MemoryEventLog from "../../src/adapters/memory/MemoryEventLog.ts"
import { eventLogContract } from "./EventLog.contract.ts"

eventLogContract("MemoryEventLog", MemoryEventLog.layer())
