import ParleyProtocol
import ParleyStore

// Messages, history, and the worker side of subscriptions. (Being written.)
extension Handler {
    func message(_ request: Request.Message) throws -> Outcome { fail(.internal, "not built yet") }
    func messages(_ request: Request.Messages) throws -> Outcome { fail(.internal, "not built yet") }
}
