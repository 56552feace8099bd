// parley-bench: the benchmark tool (fan-out, chat, ingest, connections, reconnect storm).
// Not built yet: it arrives with its own issue. Until then it prints its usage and exits.
import Foundation

let usage = """
    usage: parley-bench [options]

    the benchmark tool (fan-out, chat, ingest, connections, reconnect storm).
    This tool is not implemented yet; see the project's issues.

    """
FileHandle.standardError.write(Data(usage.utf8))
exit(CommandLine.arguments.dropFirst().contains { $0 == "--help" || $0 == "-h" } ? 0 : 64)
