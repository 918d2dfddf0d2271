"""The Python peer of `cargo xtask bench`: what a Python user would write for AXP.

A grpcio server for `ax.AgentService` and `ax.HarnessService` that runs each snippet with
`exec` in the server process, keeps one globals dict per conversation, and streams stdout
as the snippet writes it (a writer that hands every write to the response stream at once).
No sandbox, no worker process, no output cap: the strongest, not the safest, design.

Run by the bench as `python -I -S grpcio_peer.py STUBS_DIR`; it prints `listening on PORT`.
The stubs are generated from `proto/` by grpcio-tools into STUBS_DIR (never committed).
"""

import contextlib
import io
import queue
import sys
import threading
import traceback
from concurrent import futures

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402

import ax_pb2  # noqa: E402
import ax_pb2_grpc  # noqa: E402
import content_pb2  # noqa: E402

_DONE = object()


def text_message(text):
    return ax_pb2.Message(role="model", content=content_pb2.Content(text=content_pb2.TextContent(text=text)))


class StreamingWriter(io.TextIOBase):
    """sys.stdout for one execution: every complete line goes to the client at once."""

    def __init__(self, sink):
        self._sink = sink
        self._partial = ""

    def writable(self):
        return True

    def write(self, text):
        self._partial += text
        if "\n" in self._partial:
            lines, _, self._partial = self._partial.rpartition("\n")
            self._sink(lines)
        return len(text)

    def flush_rest(self):
        if self._partial:
            self._sink(self._partial)
            self._partial = ""


class Conversations:
    def __init__(self):
        self._globals = {}
        self._lock = threading.Lock()

    def run(self, conversation, code, emit):
        """Runs `code` in the conversation's globals; `emit(text)` gets output as it is written."""
        with self._lock:
            scope = self._globals.setdefault(conversation, {"__name__": "__main__"})
        writer = StreamingWriter(emit)
        with contextlib.redirect_stdout(writer):
            try:
                exec(compile(code, "<cell>", "exec"), scope)
            except BaseException:  # the snippet's error is its result
                writer.flush_rest()
                emit(traceback.format_exc())
                return
            writer.flush_rest()


def stream_execution(conversations, conversation, code, outputs, end):
    """Runs the snippet on a thread and yields responses as output arrives."""
    q = queue.Queue()
    worker = threading.Thread(
        target=lambda: (conversations.run(conversation, code, q.put), q.put(_DONE)), daemon=True
    )
    worker.start()
    while True:
        item = q.get()
        if item is _DONE:
            break
        yield outputs(item)
    yield end()


class AgentService(ax_pb2_grpc.AgentServiceServicer):
    def __init__(self, conversations):
        self._conversations = conversations

    def Connect(self, request, context):
        ids = dict(conversation_id=request.conversation_id, exec_id=request.exec_id)
        yield from stream_execution(
            self._conversations,
            request.conversation_id,
            request.start.subagent_prompt,
            lambda text: ax_pb2.AgentResponse(outputs=ax_pb2.AgentOutputs(messages=[text_message(text)]), **ids),
            lambda: ax_pb2.AgentResponse(end=ax_pb2.AgentEnd(), **ids),
        )

    def HealthCheck(self, request, context):
        return ax_pb2.HealthCheckResponse(healthy=True)


class HarnessService(ax_pb2_grpc.HarnessServiceServicer):
    def __init__(self, conversations):
        self._conversations = conversations

    def Connect(self, request_iterator, context):
        first = next(request_iterator)
        code = "\n".join(m.content.text.text for m in first.start.messages if m.role == "user")
        cid = first.conversation_id
        yield from stream_execution(
            self._conversations,
            cid,
            code,
            lambda text: ax_pb2.HarnessResponse(
                conversation_id=cid, outputs=ax_pb2.HarnessOutputs(messages=[text_message(text)])
            ),
            lambda: ax_pb2.HarnessResponse(
                conversation_id=cid, end=ax_pb2.HarnessEnd(state=ax_pb2.STATE_COMPLETED)
            ),
        )


def main():
    conversations = Conversations()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ax_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(conversations), server)
    ax_pb2_grpc.add_HarnessServiceServicer_to_server(HarnessService(conversations), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening on {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
