import ParleyProtocol
import ParleyStore

// Channels and signed membership; channel keys. (Being written.)
extension Handler {
    func channelCreate(_ request: Request.ChannelCreate) throws -> Outcome { fail(.internal, "not built yet") }
    func channels() throws -> Outcome { fail(.internal, "not built yet") }
    func channelMembers(_ request: Request.ChannelMembers) throws -> Outcome { fail(.internal, "not built yet") }
    func channelMembership(_ request: Request.ChannelMembership) throws -> Outcome { fail(.internal, "not built yet") }
    func channelChange(_ request: Request.MembershipChange, adding: Bool) throws -> Outcome { fail(.internal, "not built yet") }
    func key(_ request: Request.Key) throws -> Outcome { fail(.internal, "not built yet") }
    func keys(_ request: Request.Keys) throws -> Outcome { fail(.internal, "not built yet") }
}
