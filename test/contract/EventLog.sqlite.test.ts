import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as SqliteEventLog from "../../src/adapters/sqlite/SqliteEventLog.ts"
import { eventLogContract } from "./EventLog.contract.ts"

eventLogContract(
  "SqliteEventLog",
  SqliteEventLog.layer({ directory: join(mkdtempSync(join(tmpdir(), "harmony-log-")), "log") })
)
