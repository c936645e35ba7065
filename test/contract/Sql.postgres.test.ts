import { freshPostgres } from "../support/database.ts"
import { sqlContract } from "./Sql.contract.ts"

sqlContract("Postgres", freshPostgres)
