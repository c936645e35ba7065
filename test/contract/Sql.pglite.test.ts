import * as Sql from "../../src/adapters/sql/Sql.ts"
import { sqlContract } from "./Sql.contract.ts"

sqlContract("PGlite over pglite-socket", Sql.embedded({}))
