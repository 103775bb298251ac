FROM centos:7
ENV PATH /usr/local/bin:$PATH
ENV LANG=C.UTF-8 LC_ALL=C.UTF-8
MAINTAINER someone@example.com
RUN yum -y install epel-release && yum clean all
