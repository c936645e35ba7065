import * as MemoryEventLog from "../../src/infra/MemoryEventLog.ts"
import { eventLogContract } from "./EventLog.contract.ts"

eventLogContract("MemoryEventLog", MemoryEventLog.layer())
