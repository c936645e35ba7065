import { chatListSuite } from "./chatList.suite.ts"

chatListSuite("cluster")
