import * as Sql from "../../src/infra/Sql.ts"
import { sqlContract } from "./Sql.contract.ts"

sqlContract("PGlite over pglite-socket", Sql.embedded({}))
