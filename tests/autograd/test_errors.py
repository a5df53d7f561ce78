"""Bad input raises a clear error naming the bad value and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

import dtrain as dt
import dtrain.nn.functional as F
from dtrain.autograd import Function, GradcheckError, gradcheck


def test_broadcast_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"op Add on inputs of shapes \(3,\), \(4,\)"):
        dt.ones(3) + dt.ones(4)


def test_matmul_mismatch():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) do not align: 3 .* != 4"):
        dt.ones(2, 3) @ dt.ones(4, 5)


def test_backward_on_non_scalar_needs_a_gradient():
    x = dt.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"needs a scalar .* got shape \(3,\)"):
        (x * 2.0).backward()


def test_backward_gradient_of_wrong_shape():
    x = dt.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"gradient shape \(2,\) does not match tensor shape \(3,\)"):
        (x * 2.0).backward(np.ones(2))


def test_backward_twice_without_retain_graph():
    x = dt.ones(3, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_backward_on_tensor_without_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        dt.ones(2).sum().backward()


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="only floating-point tensors can require gradients, got dtype int64"):
        dt.tensor([1, 2], requires_grad=True)


@pytest.mark.parametrize("bad", ["complex64", "U3", object])
def test_unsupported_dtypes(bad):
    with pytest.raises(ValueError, match="unsupported dtype"):
        dt.tensor([1.0], dtype=bad)


def test_complex_data_rejected():
    with pytest.raises(ValueError, match="complex128"):
        dt.tensor(np.array([1 + 2j]))


def test_default_dtype_must_be_floating():
    with pytest.raises(ValueError, match="must be a floating dtype, got int32"):
        dt.set_default_dtype("int32")


@pytest.mark.parametrize(("spec", "exc", "msg"), [
    ("tpu", ValueError, "unknown device 'tpu': expected 'cpu', 'cuda' or 'cuda:<index>'"),
    ("cuda:x", ValueError, "unknown device"),
])
def test_bad_device_strings(spec, exc, msg):
    with pytest.raises(exc, match=msg):
        dt.tensor([1.0], device=spec)


def test_cuda_without_cupy_is_a_clear_error():
    if dt.backend.cupy_available():
        pytest.skip("a GPU is available here")
    with pytest.raises(RuntimeError, match="device 'cuda' was requested but CUDA is not usable here"):
        dt.tensor([1.0], device="cuda")


def test_reshape_errors():
    with pytest.raises(ValueError, match=r"cannot reshape a tensor of shape \(2, 3\) \(6 elements\) into \(4, -1\)"):
        dt.ones(2, 3).reshape(4, -1)


def test_conv2d_channel_mismatch():
    with pytest.raises(ValueError, match="input has 3 channels, weight expects 2"):
        F.conv2d(dt.ones(1, 3, 5, 5), dt.ones(4, 2, 3, 3))


def test_conv2d_kernel_larger_than_input():
    with pytest.raises(ValueError, match="smaller than the dilated kernel"):
        F.conv2d(dt.ones(1, 1, 2, 2), dt.ones(1, 1, 3, 3))


def test_cross_entropy_target_errors():
    logits = dt.ones(3, 4)
    with pytest.raises(IndexError, match="target class 4 is out of range for 4 classes"):
        F.cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"target shape \(2,\) does not match input \(3, 4\)"):
        F.cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        F.cross_entropy(logits, np.array([0, 1, 2]), reduction="avg")


def test_embedding_index_out_of_range():
    with pytest.raises(IndexError, match="embedding index 5 is out of range for 3 embeddings"):
        F.embedding(np.array([0, 5]), dt.ones(3, 2))


def test_batch_norm_parameter_shapes():
    with pytest.raises(ValueError, match=r"weight has shape \(3,\), expected \(2,\)"):
        F.batch_norm(dt.ones(4, 2), None, None, weight=dt.ones(3), training=True)


def test_dropout_probability_range():
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\], got 1.5"):
        F.dropout(dt.ones(3), 1.5)


def test_where_needs_boolean_condition():
    with pytest.raises(TypeError, match="condition must be boolean"):
        dt.where(np.array([1, 0]), dt.ones(2), dt.zeros(2))


def test_transpose_arguments():
    with pytest.raises(TypeError, match="use permute"):
        dt.ones(2, 3, 4).transpose(2, 0, 1)


def test_gradcheck_names_input_index_and_values():
    class WrongSquare(Function):
        def forward(self, x):
            self.saved = (x,)
            return x * x

        def backward(self, g):
            return g * self.saved[0]  # should be 2x

    x = dt.tensor([1.0, 2.0], dtype="float64", requires_grad=True)
    with pytest.raises(GradcheckError, match=r"input 0 at index \(\d,\): analytic .* vs numeric"):
        gradcheck(lambda t: WrongSquare.apply(t), [x])


def test_gradcheck_requires_float64():
    with pytest.raises(ValueError, match="input 0 has dtype float32; use float64"):
        gradcheck(lambda t: t * 2.0, [dt.ones(2, requires_grad=True)])


def test_custom_function_without_jvp_says_so():
    class NoJvp(Function):
        def forward(self, x):
            return x * 2

        def backward(self, g):
            return g * 2

    with pytest.raises(RuntimeError, match="forward-mode AD \\(jvp\\) is not defined for op NoJvp"):
        dt.autograd.jvp(lambda t: NoJvp.apply(t), dt.ones(2), np.ones(2, dtype=np.float32))


def test_backward_returning_wrong_number_of_gradients():
    class Bad(Function):
        def forward(self, a, b):
            return a + b

        def backward(self, g):
            return g

    a, b = dt.ones(2, requires_grad=True), dt.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="op Bad: backward returned 1 gradients for 2 inputs"):
        Bad.apply(a, b).sum().backward()


def test_backward_returning_a_gradient_of_the_wrong_shape():
    class BadShape(Function):
        def forward(self, a):
            return a * 2

        def backward(self, g):
            return g[:1]

    a = dt.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"op BadShape: backward returned a gradient of shape \(1,\) for an "
                                           r"input of shape \(3,\)"):
        BadShape.apply(a).sum().backward()
