import { layer } from "../../src/infra/Redis.ts"
import { serviceUrl } from "../support/services.ts"
import { cacheContract } from "./Cache.contract.ts"

cacheContract("Redis", layer({ url: serviceUrl("REDIS_URL") }))
