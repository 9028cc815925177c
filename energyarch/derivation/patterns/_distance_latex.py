"""LaTeX shared by the distance-kernel patterns."""


def update(body: str) -> str:
    return (
        r"-\nabla_{\mathbf{X}} E = \sum_{h=1}^{H} \mathbf{W}_h \left(%s\right),\quad "
        r"(\mathbf{R}_h)_{kj} = \lVert\mathbf{z}_k - \mathbf{z}_j\rVert^2" % body
    )
