#!/usr/bin/python3
"""An independent client: Debian's python3-grpcio with stubs generated here, at test time, by
python3-grpc-tools from the project's .proto files. Checks wire compatibility and answers
against a NumPy computation. Run by python_client_test (which starts the server); exits 0 when
every check passes.

usage: python_client.py --target HOST:PORT --proto-root DIR --extra-proto-root DIR
           --model-dir DIR --model NAME --out DIR
"""

import argparse
import os
import sys
import unittest

import numpy as np


def generate_stubs(proto_root, extra_root, out):
    os.makedirs(out, exist_ok=True)
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    if not os.path.isdir(include):
        include = "/usr/include"
    # Health and reflection are generated as top-level modules (health_pb2, reflection_pb2):
    # under their proto paths they would make a package named "grpc" that hides grpcio.
    files = [
        (proto_root, "adasoftmax/v1/adasoftmax.proto"),
        (os.path.join(proto_root, "grpc/health/v1"), "health.proto"),
        (os.path.join(extra_root, "grpc/reflection/v1alpha"), "reflection.proto"),
    ]
    for root, name in files:
        args = ["protoc", "-I" + root, "-I" + include, "--python_out=" + out,
                "--grpc_python_out=" + out, os.path.join(root, name)]
        if protoc.main(args) != 0:
            sys.exit("protoc failed on " + name)
    # Make the generated packages importable.
    for dirpath, _, _ in os.walk(out):
        init = os.path.join(dirpath, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()
    sys.path.insert(0, out)


ARGS = None


class WireCompatibilityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        import grpc
        from adasoftmax.v1 import adasoftmax_pb2, adasoftmax_pb2_grpc

        cls.grpc = grpc
        cls.pb = adasoftmax_pb2
        cls.channel = grpc.insecure_channel(ARGS.target)
        cls.stub = adasoftmax_pb2_grpc.SoftmaxServiceStub(cls.channel)
        d = ARGS.model_dir
        cls.weights = np.load(os.path.join(d, "weights.npy")).astype(np.float64)
        cls.bias = np.load(os.path.join(d, "bias.npy")).astype(np.float64)
        cls.queries = np.load(os.path.join(d, "queries.npy"))
        with open(os.path.join(d, "labels.txt")) as f:
            cls.labels = f.read().splitlines()

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    def reference(self, q):
        logits = self.weights @ q.astype(np.float64) + self.bias
        m = logits.max()
        log_z = m + np.log(np.exp(logits - m).sum())
        return logits, log_z

    def request(self, row, **fields):
        r = self.pb.TopKSoftmaxRequest(model=ARGS.model, k=fields.pop("k", 3), **fields)
        r.query.extend(self.queries[row].tolist())
        return r

    def test_health_is_serving(self):
        import health_pb2
        import health_pb2_grpc

        health = health_pb2_grpc.HealthStub(self.channel)
        for service in ["", "adasoftmax.v1.SoftmaxService", ARGS.model]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            self.assertEqual(reply.status, health_pb2.HealthCheckResponse.SERVING)
        with self.assertRaises(self.grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="no-such-model"), timeout=10)
        self.assertEqual(caught.exception.code(), self.grpc.StatusCode.NOT_FOUND)

    def test_list_models(self):
        reply = self.stub.ListModels(self.pb.ListModelsRequest(), timeout=10)
        model = [m for m in reply.models if m.name == ARGS.model][0]
        self.assertEqual(model.n, self.weights.shape[0])
        self.assertEqual(model.d, self.weights.shape[1])
        self.assertEqual(model.dtype, "float32")
        self.assertEqual(model.sampling_dtype, "float16")
        self.assertTrue(model.has_bias)
        self.assertTrue(model.has_labels)
        self.assertAlmostEqual(model.default_epsilon, 0.3)
        self.assertEqual(model.default_mode, self.pb.MODE_ADAPTIVE)
        self.assertEqual(list(reply.unavailable), [])  # every folder loads

    def test_exact_answers_match_numpy(self):
        for row in range(8):
            reply = self.stub.TopKSoftmax(self.request(row, k=4, mode=self.pb.MODE_EXACT),
                                          timeout=10)
            logits, log_z = self.reference(self.queries[row])
            want = np.argsort(-logits, kind="stable")[:4]
            self.assertEqual(list(reply.indices), want.tolist())
            np.testing.assert_allclose(reply.probabilities, np.exp(logits[want] - log_z),
                                       rtol=1e-4)
            np.testing.assert_allclose(reply.logits, logits[want], rtol=1e-5, atol=1e-5)
            self.assertAlmostEqual(reply.log_partition, log_z, places=4)
            self.assertEqual(list(reply.labels), [self.labels[i] for i in want])
            self.assertEqual(reply.samples, self.weights.size)
            self.assertEqual(reply.mode, self.pb.MODE_EXACT)
            self.assertGreaterEqual(reply.batch_size, 1)

    def test_adaptive_answers_meet_the_guarantee(self):
        from google.protobuf import wrappers_pb2

        for row in range(8):
            request = self.request(row, k=1, seed=77 + row,
                                   epsilon=wrappers_pb2.DoubleValue(value=0.2))
            reply = self.stub.TopKSoftmax(request, timeout=10)
            logits, log_z = self.reference(self.queries[row])
            self.assertEqual(reply.indices[0], int(np.argmax(logits)))
            p = np.exp(logits[reply.indices[0]] - log_z)
            self.assertLessEqual(abs(reply.probabilities[0] - p), 0.2 * p)
            self.assertEqual(reply.mode, self.pb.MODE_ADAPTIVE)
            self.assertGreater(reply.samples, 0)
            self.assertLessEqual(reply.sample_fraction, 1.0)

    def test_bad_input_names_the_field(self):
        grpc = self.grpc
        from google.protobuf import wrappers_pb2

        cases = [
            (self.request(0, k=0), grpc.StatusCode.INVALID_ARGUMENT, "k:"),
            (self.request(0, delta=wrappers_pb2.DoubleValue(value=2)),
             grpc.StatusCode.INVALID_ARGUMENT, "delta:"),
            (self.pb.TopKSoftmaxRequest(model=ARGS.model, k=1, query=[float("nan")] * 64),
             grpc.StatusCode.INVALID_ARGUMENT, "query:"),
            (self.pb.TopKSoftmaxRequest(model="missing", k=1, query=[1.0]),
             grpc.StatusCode.NOT_FOUND, "model:"),
        ]
        for request, code, field in cases:
            with self.assertRaises(grpc.RpcError) as caught:
                self.stub.TopKSoftmax(request, timeout=10)
            self.assertEqual(caught.exception.code(), code)
            self.assertIn(field, caught.exception.details())

    def test_stream(self):
        requests = []
        for row in range(12):
            r = self.request(row, k=2, mode=self.pb.MODE_EXACT)
            r.id = "row-%d" % row
            requests.append(r)
        bad = self.pb.TopKSoftmaxRequest(model=ARGS.model, k=0, id="bad")
        bad.query.extend(self.queries[0].tolist())
        requests.append(bad)
        replies = {r.id: r for r in self.stub.TopKSoftmaxStream(iter(requests), timeout=30)}
        self.assertEqual(len(replies), 13)
        for row in range(12):
            reply = replies["row-%d" % row]
            self.assertEqual(reply.WhichOneof("result"), "response")
            logits, _ = self.reference(self.queries[row])
            self.assertEqual(reply.response.indices[0], int(np.argmax(logits)))
        self.assertEqual(replies["bad"].WhichOneof("result"), "error")
        self.assertEqual(replies["bad"].error.code, self.grpc.StatusCode.INVALID_ARGUMENT.value[0])
        self.assertIn("k:", replies["bad"].error.message)

    def test_batch(self):
        batch = self.pb.TopKSoftmaxBatchRequest()
        for row in range(12):
            batch.requests.append(self.request(row, k=2, mode=self.pb.MODE_EXACT, id="row-%d" % row))
        bad = self.request(0, k=0, id="bad")
        batch.requests.insert(5, bad)
        reply = self.stub.TopKSoftmaxBatch(batch, timeout=30)
        self.assertEqual([r.id for r in reply.results], [r.id for r in batch.requests])
        for request, result in zip(batch.requests, reply.results):
            if request.id == "bad":
                self.assertEqual(result.WhichOneof("result"), "error")
                self.assertEqual(result.error.code, self.grpc.StatusCode.INVALID_ARGUMENT.value[0])
                self.assertIn("k:", result.error.message)
                continue
            self.assertEqual(result.WhichOneof("result"), "response")
            logits, log_z = self.reference(np.array(request.query, dtype=np.float32))
            want = np.argsort(-logits, kind="stable")[:2]
            self.assertEqual(list(result.response.indices), want.tolist())
            np.testing.assert_allclose(result.response.probabilities,
                                       np.exp(logits[want] - log_z), rtol=1e-4)

    def test_reflection_lists_the_services(self):
        import reflection_pb2
        import reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="adasoftmax.v1.SoftmaxService"),
        ]
        replies = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
        names = [s.name for s in replies[0].list_services_response.service]
        self.assertIn("adasoftmax.v1.SoftmaxService", names)
        self.assertIn("grpc.reflection.v1alpha.ServerReflection", names)
        from google.protobuf import descriptor_pb2

        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in replies[1].file_descriptor_response.file_descriptor_proto]
        self.assertIn("adasoftmax/v1/adasoftmax.proto", [f.name for f in files])


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    for flag in ["--target", "--proto-root", "--extra-proto-root", "--model-dir", "--model",
                 "--out"]:
        parser.add_argument(flag, required=True)
    ARGS = parser.parse_args()
    generate_stubs(ARGS.proto_root, ARGS.extra_proto_root, ARGS.out)
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(WireCompatibilityTest)
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
